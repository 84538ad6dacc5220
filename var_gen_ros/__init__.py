"""var_gen_ros: the Infinity bitwise VAR text-to-image generator as a ROS 2 node.

The core (`var_gen_ros.infinity`, `var_gen_ros.quant`, `var_gen_ros.engine`) does not import rclpy;
only `var_gen_ros.node` and `var_gen_ros.ros_conversions` do.
"""
__version__ = "0.1.0"
