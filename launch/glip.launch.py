"""Launch glip_node with a params file, an image remap and a query.

    ros2 launch glip_ros glip.launch.py image:=/camera/color/image_raw query:="red mug. laptop"
    ros2 launch glip_ros glip.launch.py params_file:=/path/to/glip.yaml use_sim_time:=true

Arguments: image (topic the node's `image` input is remapped to), params_file (default: the installed
config/glip.yaml), namespace, and query, checkpoint, device, use_sim_time: each of these four, when given,
overrides the same parameter of params_file; left empty (their default) the file's value stands. (Passing
the launch defaults would silently replace a checkpoint or query set in the file: ROS applies later
parameter entries over earlier ones.)
The node configures and activates itself (parameter autostart); set autostart:=false in the params file to
bring it up with a lifecycle manager instead. Written for a ROS 2 install with launch_ros (Humble or newer);
on pip-only machines start the node with `glip_node --ros-args ...` (see docs/INTERFACES.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

# Launch arguments laid over params_file when given (non-empty), with their parameter types.
OVERRIDES = {"query": str, "checkpoint": str, "device": str, "use_sim_time": bool}


def _glip_node(context: LaunchContext) -> list[Node]:
    given = {
        name: ParameterValue(LaunchConfiguration(name), value_type=kind)
        for name, kind in OVERRIDES.items()
        if LaunchConfiguration(name).perform(context) != ""
    }
    parameters: list = [LaunchConfiguration("params_file")]
    if given:
        parameters.append(given)
    node = Node(
        package="glip_ros",
        executable="glip_node",
        name="glip_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=parameters,
        remappings=[("image", LaunchConfiguration("image"))],
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("glip_ros")
    default_params = os.path.join(share, "config", "glip.yaml")
    args = [
        DeclareLaunchArgument(
            "image", default_value="image", description="input image topic (sensor_msgs/Image)"
        ),
        DeclareLaunchArgument(
            "params_file", default_value=default_params, description="node parameters YAML"
        ),
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of the node and its topics"
        ),
        DeclareLaunchArgument(
            "query", default_value="", description="initial query; empty = params_file's (default idle)"
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="",
            description="model file; empty = params_file's (default: the embedded model)",
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            description="auto, cpu, cuda, cuda:N; empty = params_file's (default auto)",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="",
            description="true: use the /clock topic; empty = params_file's (default false)",
        ),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_glip_node)])
