"""ROS 2 serving layer for Vision-Language-Action robot policies."""
