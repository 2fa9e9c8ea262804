"""ROS 2 side of glip_ros: the node, message conversions, debug drawing and the demo graph.

This is the only subpackage that imports rclpy or message types; ``glip_ros.model`` and
``glip_ros.engine`` stay usable without ROS.
"""
