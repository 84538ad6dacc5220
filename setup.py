import os
from glob import glob

from setuptools import find_packages, setup

package_name = "var_gen_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["var_gen_ros", "var_gen_ros.*"]) + ["var_gen_ros_kernels"],
    package_dir={"var_gen_ros_kernels": "kernels"},
    # the CUDA C++ sources travel with the kernels: torch.utils.cpp_extension builds them on first use; so do the
    # autotuning picks shipped per GPU model (kernels/tuned_picks.py)
    package_data={"var_gen_ros": ["data/*", "data/**/*"], "var_gen_ros_kernels": ["*.cu", "*.cuh", "*.cpp", "tuned/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        (os.path.join("share", package_name, "launch"), glob("launch/*.launch.py")),
        (os.path.join("share", package_name, "config"), glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["numpy", "safetensors", "transformers", "tokenizers"],
    zip_safe=False,
    maintainer="var_gen_ros developers",
    maintainer_email="maintainers@var-gen-ros.dev",
    description="Infinity bitwise VAR text-to-image generator, W4A4 + INT8 KV, as a ROS 2 node",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "var-gen = var_gen_ros.cli:main",
            "gen_node = var_gen_ros.node:main",
        ],
    },
)
