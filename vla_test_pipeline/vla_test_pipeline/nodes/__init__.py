"""Thin rclpy shells of the synthetic robot: episode logic and sensors live in plain modules."""
