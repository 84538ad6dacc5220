# Source me: puts the colcon-built var_gen_ros_interfaces on the paths rclpy and Python read.
_VGR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_VGR_PFX=$_VGR_ROOT/build/interfaces/install/var_gen_ros_interfaces
export AMENT_PREFIX_PATH=$_VGR_PFX:$_VGR_ROOT/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
export PYTHONPATH=$(ls -d "$_VGR_PFX"/lib/python3*/site-packages 2>/dev/null | head -1)${PYTHONPATH:+:$PYTHONPATH}
export LD_LIBRARY_PATH=$_VGR_PFX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
