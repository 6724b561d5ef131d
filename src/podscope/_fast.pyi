# Types of podscope._fast (src/podscope/native/*.c), the compiled per-event paths.
from collections.abc import Callable, Sequence
from typing import Any

SAMPLE_CALLBACK: int  # address of the ring_buffer_sample_fn that fills a Batch
HTTP_RECORD_SIZE: int  # sizeof(struct http_record) as the extension was compiled

class Batch:
    ctx: int
    dropped: int
    pending: int
    def __init__(self, limit: int = ...) -> None: ...
    def take(self) -> bytes: ...
    def clear(self) -> None: ...
    def __buffer__(self, flags: int) -> memoryview: ...

def split(data: bytes | memoryview) -> list[bytes]: ...

class HttpJsonl:
    short_records: int
    cached: int
    def __init__(self, labels_of: Callable[[int, int], bytes], target_of: Callable[[bytes], bytes],
                 peer_of: Callable[[int, bytes], bytes], methods: tuple[bytes, ...],
                 reasons: tuple[bytes, ...], mono_to_wall: float) -> None: ...
    def encode(self, batch: bytes | memoryview, write: Callable[[bytes, int], object]) -> int: ...
    def clear_labels(self) -> None: ...

# HTTP/2 frames and HPACK (native/h2.c)
EV_DATA: int
EV_HEADERS: int
EV_RST: int
EV_GOAWAY: int
EV_PREFACE: int

def h2_huffman(codes: Sequence[int], lengths: Sequence[int]) -> None: ...

class H2Wire:
    seen_start: bool
    def __init__(self, seen_start: bool = True) -> None: ...
    def feed(self, from_client: bool, data: bytes | memoryview, uncaptured: int = 0
             ) -> tuple[list[tuple[Any, ...]], str | None]: ...
    def buffered(self, from_client: bool) -> int: ...

H2_CELL_SIZE: int

class H2Engine:
    connections: int
    events: int
    requests: int
    hints: int
    def __init__(self, python: dict[Any, Any], adopt: Callable[[bytes], None]) -> None: ...
    def process(self, batch: bytes | memoryview) -> list[bytes]: ...
    def take(self) -> tuple[list[tuple[tuple[Any, ...], bytes]], dict[str, int]]: ...
    def forget(self, conn_id: int) -> None: ...
