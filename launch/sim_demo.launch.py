"""The simulation demo: glip_node + a synthetic camera + scripted queries + rviz2.

    ros2 launch glip_ros sim_demo.launch.py
    ros2 launch glip_ros sim_demo.launch.py rviz:=false out:=/tmp/glip_demo period:=10.0

The synthetic camera publishes rendered scenes of coloured shapes on `image`; the query script sets
"red circle. blue square", "green triangle" and "" (idle) in turn through ~/set_query, prints the
detections per query and writes annotated frames under `out`; rviz2 shows `debug_image` with
config/glip.rviz. The same graph without ROS launch (pip-only machines): `glip-demo` (glip_ros/ros/demo.py).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("glip_ros")
    params_file = os.path.join(share, "config", "glip.yaml")
    rviz_config = os.path.join(share, "config", "glip.rviz")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    args = [
        DeclareLaunchArgument(
            "checkpoint", default_value="", description="model file; empty = embedded default"
        ),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("rate", default_value="5.0", description="synthetic camera frame rate (Hz)"),
        DeclareLaunchArgument("period", default_value="8.0", description="seconds per scripted query"),
        DeclareLaunchArgument("out", default_value="out/demo", description="folder for annotated frames"),
        DeclareLaunchArgument("rviz", default_value="true", description="start rviz2 with config/glip.rviz"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use the /clock topic"),
    ]
    glip = Node(
        package="glip_ros",
        executable="glip_node",
        name="glip_node",
        output="screen",
        parameters=[
            params_file,
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "query": "",
                "use_sim_time": use_sim_time,
            },
        ],
    )
    camera = Node(
        package="glip_ros",
        executable="synthetic_camera",
        name="synthetic_camera",
        output="screen",
        parameters=[
            {
                "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
                "width": 320,  # as glip-demo: the embedded model runs at 256 px; smaller frames over DDS
                "height": 240,
                "frame_id": "camera",
                "use_sim_time": use_sim_time,
            }
        ],
    )
    script = Node(
        package="glip_ros",
        executable="glip_scripted_queries",
        name="glip_scripted_queries",
        output="screen",
        parameters=[
            {
                "queries": ["red circle. blue square", "green triangle", ""],
                "period": ParameterValue(LaunchConfiguration("period"), value_type=float),
                "out": ParameterValue(LaunchConfiguration("out"), value_type=str),
                "node": "glip_node",
                "use_sim_time": use_sim_time,
            }
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", rviz_config],
        condition=IfCondition(LaunchConfiguration("rviz")),
        parameters=[{"use_sim_time": use_sim_time}],
    )
    # The demo ends when the query script is done (as glip-demo does).
    stop = RegisterEventHandler(OnProcessExit(target_action=script, on_exit=[EmitEvent(event=Shutdown())]))
    return LaunchDescription([*args, glip, camera, script, rviz, stop])
