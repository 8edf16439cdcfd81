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
    DECODED_SIZE_OVER_BUDGET = "decoded_size_over_budget"  # header: width*height*channels*bytes too big
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
    IMU_CLOCK_STEP = "imu_clock_step"  # the IMU clock stepped back; later samples are on an unknown clock
    CLOCK_MISMATCH = "clock_mismatch"  # the declared clock disagrees with a confident estimate from content
    DEPTH_BIT_DEPTH = "depth_bit_depth"  # a depth image whose bit depth cannot hold its declared unit (8-bit "mm")
    DEPTH_IMPLAUSIBLE = "depth_implausible"  # depth values outside any real sensor's range for the declared unit
    THERMAL_IMPLAUSIBLE = "thermal_implausible"  # a thermal frame that cannot hold its declared unit (8-bit "cK")
    ORIENTATION_MISMATCH = "orientation_mismatch"  # a still pair whose members carry different EXIF orientations
    AUDIO_GAP = "audio_gap"  # the audio timestamps jump over a hole (or step back) inside the window
    AUDIO_FORMAT_CHANGE = "audio_format_change"  # the audio sample rate or channel layout changes inside the window
    CORRUPT_PACKETS = "corrupt_packets"  # packets in the window failed to decode (damage mid-file); others kept
    PARTIAL_WINDOW = "partial_window"
    INTERNAL_ERROR = "internal_error"
    # Per-sample quality filters (transforms/filters.py): a figure beyond its threshold
    AUDIO_SILENT = "audio_silent"
    AUDIO_CLIPPED = "audio_clipped"
    FRAME_BLACK = "frame_black"
    FRAME_WHITE = "frame_white"
    FRAME_BLURRED = "frame_blurred"
    FRAME_FROZEN = "frame_frozen"
    DEPTH_INVALID = "depth_invalid"
    THERMAL_FLAT = "thermal_flat"
    IMU_SATURATED = "imu_saturated"
    # Transient by nature (see TRANSIENT)
    INPUT_CHANGED = "input_changed"  # an input's size or mtime changed while the build read it
    IO_ERROR = "io_error"  # reading failed for a reason outside the file's content (EIO, a lost mount)


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
        RejectReason.DECODED_SIZE_OVER_BUDGET,
        RejectReason.NO_VIDEO_STREAM,
        RejectReason.NO_AUDIO_STREAM,
        RejectReason.NOT_A_REGULAR_FILE,
        RejectReason.SYMLINK_LOOP,
        RejectReason.PERMISSION_DENIED,
        RejectReason.UNSUPPORTED_FORMAT,
        RejectReason.DUPLICATE_SESSION,
        RejectReason.UNUSED_FILE,
        RejectReason.INPUT_CHANGED,
        RejectReason.IO_ERROR,
    }
)

#: Codes that may not happen again: a busy machine, a crash of the decode worker, a bug, an I/O error or an
#: input caught mid-change. A unit with one of them is rerun by the next build (up to a number of attempts,
#: at once with ``bindset build --retry-failed``); every other code is terminal (the input itself is bad).
TRANSIENT = frozenset(
    {
        RejectReason.DECODE_TIMEOUT,
        RejectReason.DECODER_CRASH,
        RejectReason.INTERNAL_ERROR,
        RejectReason.INPUT_CHANGED,
        RejectReason.IO_ERROR,
    }
)

#: Codes the per-sample quality filters give (transforms/filters.py); the gate bounds how often each occurs.
QUALITY_FILTER = frozenset(
    {
        RejectReason.AUDIO_SILENT,
        RejectReason.AUDIO_CLIPPED,
        RejectReason.FRAME_BLACK,
        RejectReason.FRAME_WHITE,
        RejectReason.FRAME_BLURRED,
        RejectReason.FRAME_FROZEN,
        RejectReason.DEPTH_INVALID,
        RejectReason.THERMAL_FLAT,
        RejectReason.IMU_SATURATED,
    }
)
