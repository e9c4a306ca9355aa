"""Video files frame by frame, with PyAV (FFmpeg's libraries, bundled in its wheels): the frames
``facenas predict`` detects faces in, and the annotated copy it writes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's first video stream declares: frame size, frame rate (frames per
    second; None when the container does not say) and frame count (0 when unknown)."""

    width: int
    height: int
    rate: Fraction | None
    frames: int


def _open(path: str | Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise OSError(f"{path}: not a readable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise OSError(f"{path}: no video stream in the file")
    return container


def video_info(path: str | Path) -> VideoInfo:
    """The :class:`VideoInfo` of ``path``; a file FFmpeg cannot read is an ``OSError`` naming it."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            int(stream.codec_context.width), int(stream.codec_context.height), rate, int(stream.frames or 0)
        )


def read_frames(path: str | Path) -> Iterator[tuple[int, float | None, np.ndarray]]:
    """``(index, time in seconds or None, HxWx3 uint8 RGB)`` of every frame of the first video
    stream, in order."""
    with _open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            yield index, (float(frame.time) if frame.time is not None else None), frame.to_ndarray(format="rgb24")


class VideoWriter:
    """Writes RGB frames to a video file with the codec FFmpeg picks for its container (H.264
    for ``.mp4``/``.mkv``/``.mov``, MPEG-4 part 2 for ``.avi``, VP9 for ``.webm``), at ``rate``
    frames per second. The frame size is fixed by the first frame; odd sizes are padded by one
    pixel (the encoders' 4:2:0 chroma needs even sides)."""

    def __init__(self, path: str | Path, rate: Fraction | float | None) -> None:
        self.path = Path(path)
        self.rate = Fraction(rate).limit_denominator(1001) if rate else Fraction(25)
        self._container = None
        self._stream = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame."""
        import av

        height, width = frame.shape[:2]
        if self._container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), "w")
            self._stream = self._container.add_stream(self._container.default_video_codec, rate=self.rate)
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
        if (width + width % 2, height + height % 2) != (self._stream.width, self._stream.height):
            raise ValueError(f"{self.path}: frame {self.frames} is {width}x{height}, the video is not")
        if width % 2 or height % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (nothing is written when no frame came)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
