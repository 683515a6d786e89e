"""Typed errors raised by the tracker; the server maps each to a 4xx reason."""

from __future__ import annotations


class TrackerError(Exception):
    """Base class; the tracker's state is unchanged when one is raised."""

    code = "tracker_error"


class InvalidFrameError(TrackerError, ValueError):
    code = "invalid_frame"


class InvalidPromptError(TrackerError, ValueError):
    code = "invalid_prompt"


class UnknownTrackError(TrackerError, KeyError):
    code = "unknown_track"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown track"


class TooManyTracksError(TrackerError):
    code = "too_many_tracks"


class TooManyPointsError(InvalidPromptError):
    code = "too_many_points"


class NoFrameYetError(TrackerError):
    code = "no_frame_yet"
