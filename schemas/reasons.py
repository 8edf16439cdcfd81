"""Reject reason codes: every clip window or input that does not reach a shard carries one.

The values are stable strings because they are written to ``rejects.parquet`` and counted in
``manifest.json``; renaming one is a breaking change of the output contract.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    # Whole inputs (a file, a session, a manifest)
    MANIFEST_INVALID = "manifest_invalid"
    PATH_ESCAPES_ROOT = "path_escapes_root"
    FILE_MISSING = "file_missing"
    EMPTY_FILE = "empty_file"
    UNKNOWN_LAYOUT = "unknown_layout"
    DECODE_ERROR = "decode_error"
    TRUNCATED_MEDIA = "truncated_media"
    DECODE_TIMEOUT = "decode_timeout"
    DECODER_CRASH = "decoder_crash"
    ABSURD_DIMENSIONS = "absurd_dimensions"
    NO_VIDEO_STREAM = "no_video_stream"
    NO_AUDIO_STREAM = "no_audio_stream"
    CORRUPT_IMAGE = "corrupt_image"
    BAD_TIMESTAMPS = "bad_timestamps"
    DUPLICATE_TIMESTAMPS = "duplicate_timestamps"
    NON_MONOTONIC_TIMESTAMPS = "non_monotonic_timestamps"
    # Files the build may not or cannot open (transforms/paths.py), and inputs no unit takes
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # a FIFO, socket, device, or a folder where a file is named
    SYMLINK_LOOP = "symlink_loop"
    PERMISSION_DENIED = "permission_denied"
    UNSUPPORTED_FORMAT = "unsupported_format"  # FFmpeg (media) or the image readers cannot read this format
    DUPLICATE_SESSION = "duplicate_session"  # a second input declaring a session id already taken
    UNUSED_FILE = "unused_file"  # a file the detected layout has no use for (a stray beside the inputs)
    # One clip window, or one modality of it
    NO_FRAMES_IN_WINDOW = "no_frames_in_window"
    AUDIO_OUT_OF_RANGE = "audio_out_of_range"
    DEPTH_MISSING = "depth_missing"
    THERMAL_MISSING = "thermal_missing"
    IMU_OUT_OF_RANGE = "imu_out_of_range"
    IMU_GAP = "imu_gap"
    IMU_NAN = "imu_nan"
    PARTIAL_WINDOW = "partial_window"
    INTERNAL_ERROR = "internal_error"


#: Codes that describe a whole input rather than one window.
INPUT_LEVEL = frozenset(
    {
        RejectReason.MANIFEST_INVALID,
        RejectReason.PATH_ESCAPES_ROOT,
        RejectReason.FILE_MISSING,
        RejectReason.EMPTY_FILE,
        RejectReason.UNKNOWN_LAYOUT,
        RejectReason.DECODE_ERROR,
        RejectReason.TRUNCATED_MEDIA,
        RejectReason.DECODE_TIMEOUT,
        RejectReason.DECODER_CRASH,
        RejectReason.ABSURD_DIMENSIONS,
        RejectReason.NO_VIDEO_STREAM,
        RejectReason.NO_AUDIO_STREAM,
        RejectReason.NOT_A_REGULAR_FILE,
        RejectReason.SYMLINK_LOOP,
        RejectReason.PERMISSION_DENIED,
        RejectReason.UNSUPPORTED_FORMAT,
        RejectReason.DUPLICATE_SESSION,
        RejectReason.UNUSED_FILE,
    }
)
