"""Launch glip_node with a params file, an image remap and a query.

    ros2 launch glip_ros glip.launch.py image:=/camera/color/image_raw query:="red mug. laptop"
    ros2 launch glip_ros glip.launch.py params_file:=/path/to/glip.yaml use_sim_time:=true

Arguments: image (topic the node's `image` input is remapped to), query (initial query; empty = idle),
params_file (default: the installed config/glip.yaml), use_sim_time, namespace, checkpoint, device.
The node configures and activates itself (parameter autostart); set autostart:=false in the params file to
bring it up with a lifecycle manager instead. Written for a ROS 2 install with launch_ros (Humble or newer);
on pip-only machines start the node with `glip_node --ros-args ...` (see docs/INTERFACES.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("glip_ros")
    default_params = os.path.join(share, "config", "glip.yaml")
    args = [
        DeclareLaunchArgument(
            "image", default_value="image", description="input image topic (sensor_msgs/Image)"
        ),
        DeclareLaunchArgument("query", default_value="", description="initial query; empty = idle"),
        DeclareLaunchArgument(
            "params_file", default_value=default_params, description="node parameters YAML"
        ),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use the /clock topic"),
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of the node and its topics"
        ),
        DeclareLaunchArgument(
            "checkpoint", default_value="", description="model file; empty = embedded default"
        ),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
    ]
    node = Node(
        package="glip_ros",
        executable="glip_node",
        name="glip_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "query": ParameterValue(LaunchConfiguration("query"), value_type=str),
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[("image", LaunchConfiguration("image"))],
    )
    return LaunchDescription([*args, node])
