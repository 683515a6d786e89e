"""Frames, hand-off mailboxes, overlay drawing, and video sources and sinks."""
