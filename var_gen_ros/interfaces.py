"""Import var_gen_ros_interfaces (msg/, action/) whether it was installed by colcon on a ROS 2 system
(sourced workspace: nothing to do) or built in this checkout by tools/build_interfaces.sh (then its
prefix is put on the paths here, and its typesupport libraries are preloaded so that rclpy's dlopen
by name finds them without LD_LIBRARY_PATH). ROS layer only."""
from __future__ import annotations

import ctypes
import glob
import os
import sys

_REPO_PREFIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "build", "interfaces", "install", "var_gen_ros_interfaces")


def _use_local_build(prefix: str) -> None:
    site = glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages"))
    if site and site[0] not in sys.path:
        sys.path.insert(0, site[0])
    ament = os.environ.get("AMENT_PREFIX_PATH", "")
    if prefix not in ament.split(os.pathsep):
        os.environ["AMENT_PREFIX_PATH"] = prefix + (os.pathsep + ament if ament else "")
    # generator_c first: the typesupport libraries link against it
    libs = sorted(glob.glob(os.path.join(prefix, "lib", "lib*.so")), key=lambda p: "generator_c" not in p)
    for lib in libs:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def load():
    """-> (msg module, action module)."""
    try:
        from var_gen_ros_interfaces import action, msg
        from var_gen_ros_interfaces.msg import GenerationStatus
        GenerationStatus.__class__.__import_type_support__()
        return msg, action
    except Exception:
        if not os.path.isdir(_REPO_PREFIX):
            raise ImportError("var_gen_ros_interfaces not found: build it with tools/build_interfaces.sh "
                              "(or colcon build on a ROS 2 system and source the workspace)") from None
    for mod in [m for m in sys.modules if m.startswith("var_gen_ros_interfaces")]:
        del sys.modules[mod]
    _use_local_build(_REPO_PREFIX)
    from var_gen_ros_interfaces import action, msg
    return msg, action
