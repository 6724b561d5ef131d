# Types of podscope._fast (src/podscope/native/*.c), the compiled per-event paths.
from collections.abc import Callable

SAMPLE_CALLBACK: int  # address of the ring_buffer_sample_fn that fills a Batch
HTTP_RECORD_SIZE: int  # sizeof(struct http_record) as the extension was compiled

class Batch:
    ctx: int
    dropped: int
    pending: int
    def __init__(self, limit: int = ...) -> None: ...
    def take(self) -> bytes: ...

def split(data: bytes) -> list[bytes]: ...

class HttpJsonl:
    short_records: int
    cached: int
    def __init__(self, labels_of: Callable[[int, int], bytes], target_of: Callable[[bytes], bytes],
                 peer_of: Callable[[int, bytes], bytes], methods: tuple[bytes, ...],
                 reasons: tuple[bytes, ...], mono_to_wall: float) -> None: ...
    def encode(self, batch: bytes) -> tuple[bytes, int]: ...
    def clear_labels(self) -> None: ...
