"""glip_ros: GLIP open-vocabulary detection in plain PyTorch, with a ROS 2 node."""

# Keep this line first. The generated interfaces (glip_ros.msg, glip_ros.srv and their typesupport
# libraries) are installed by CMake into <site-packages>/glip_ros/, but the Python code is often imported
# from the source tree: the repo root is on sys.path for `python -m ...` and pytest run from the repo root,
# and for the editable install made by scripts/setup.sh. extend_path adds every other `glip_ros` folder
# on sys.path to this package's __path__, so glip_ros.msg / glip_ros.srv are found either way.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)


def __getattr__(name: str):
    # Lazy, so `import glip_ros.msg` in a ROS process does not pull torch in.
    if name in ("GLIPDetector", "Detection"):
        from . import detector

        return getattr(detector, name)
    if name == "GroundingEngine":
        from .engine import GroundingEngine

        return GroundingEngine
    raise AttributeError(f"module 'glip_ros' has no attribute {name!r}")
