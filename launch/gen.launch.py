"""ros2 launch var_gen_ros gen.launch.py [config:=...] [bundle:=...] [device:=...] [namespace:=...] [rviz:=true]
[respawn:=false] [managed:=true]

managed (default false): the node comes up unconfigured, for a lifecycle manager (nav2_lifecycle_manager, or
`ros2 lifecycle set /var_gen configure`, then `activate`); `cleanup` unloads the model and gives its memory back.
By default it configures and activates itself.

respawn (default true): the node exits with status 3 after a GPU fault (a sticky CUDA error; see its
exit_on_gpu_fault parameter), and launch starts it again after respawn_delay, at most RESPAWN_MAX_RETRIES times, so
that a fault that recurs at every start (its warm-up hitting a broken kernel, say) does not loop for ever."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


RESPAWN_MAX_RETRIES = 5


def generate_launch_description():
    share = get_package_share_directory("var_gen_ros")
    config = LaunchConfiguration("config")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "gen.yaml"),
                              description="parameter file"),
        DeclareLaunchArgument("bundle", default_value="", description="model bundle directory ('' = default)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda[:N]"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with config/gen.rviz"),
        DeclareLaunchArgument("respawn", default_value="true",
                              description="restart the node when it exits (it does after a GPU fault)"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="come up unconfigured, for a lifecycle manager (configure loads the model)"),
        Node(package="var_gen_ros", executable="gen_node", name="var_gen", namespace=LaunchConfiguration("namespace"),
             output="screen", respawn=LaunchConfiguration("respawn"), respawn_delay=2.0,
             respawn_max_retries=RESPAWN_MAX_RETRIES,
             parameters=[config, {"bundle_path": LaunchConfiguration("bundle"),
                                  "device": LaunchConfiguration("device"),
                                  "managed": ParameterValue(LaunchConfiguration("managed"), value_type=bool)}]),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", os.path.join(share, "config", "gen.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
