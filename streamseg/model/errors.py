"""Typed errors raised by the tracker; the server maps each to a 4xx reason."""

from __future__ import annotations


class TrackerError(Exception):
    """Base class; the tracker's state is unchanged when one is raised."""

    code = "tracker_error"


class InvalidFrameError(TrackerError, ValueError):
    code = "invalid_frame"


class InvalidPromptError(TrackerError, ValueError):
    code = "invalid_prompt"


class OutOfFrameError(InvalidPromptError):
    """A point or box corner outside the frame the prompt lands on; the same code as
    the protocol's `check_prompt_in_frame`, so every surface answers alike."""

    code = "out_of_frame"


class FutureFrameError(InvalidPromptError):
    """`frame_seq` names a frame the stream has not received yet."""

    code = "future_frame"


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
