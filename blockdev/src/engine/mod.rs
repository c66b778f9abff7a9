//! I/O engines for file-backed devices: io_uring, and a thread pool where io_uring is refused.
