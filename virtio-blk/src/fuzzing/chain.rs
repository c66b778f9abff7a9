//! Fuzzing virtio-core's chain walker on its own: arbitrary bytes are guest memory (one region,
//! two adjacent regions, or two with a hole between them), a descriptor table address, queue
//! size and head, and a list of reader / writer operations. `Chain::walk` must agree with the
//! reference walker, and every cursor operation with a model built from prefix sums; at the end
//! guest memory must equal a shadow copy that only the model's writes changed.

use vm_memory::{Bytes, GuestAddress};
use vstor_virtio_core::chain::{Chain, ChainLimits, Reader, Segment, Writer};
use vstor_virtio_core::memory::anonymous;
use vstor_virtio_core::GuestMemory;

use super::{ref_walk, Input, RefMem};

/// Cursors of each kind alive at once at most.
const SLOTS: usize = 4;
/// Operations per input at most.
const MAX_OPS: u8 = 32;
/// Largest read or write the model copies (lengths are up to 4 GiB).
const MAX_DATA: u64 = 1 << 20;

/// Guest memory as the model sees it: regions and their expected content.
struct Shadow {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Shadow {
    fn region(&self, addr: u64) -> Option<(u64, &Vec<u8>)> {
        self.regions
            .iter()
            .find(|(s, d)| addr >= *s && addr - s < d.len() as u64)
            .map(|(s, d)| (*s, d))
    }

    fn byte_mut(&mut self, addr: u64) -> &mut u8 {
        let (s, d) = self
            .regions
            .iter_mut()
            .find(|(s, d)| addr >= *s && addr - *s < d.len() as u64)
            .expect("model address inside a region");
        &mut d[(addr - *s) as usize]
    }

    fn byte(&self, addr: u64) -> u8 {
        let (s, d) = self.region(addr).expect("model address inside a region");
        d[(addr - s) as usize]
    }
}

impl RefMem for Shadow {
    fn valid(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        while at < end {
            match self.region(at) {
                Some((s, d)) => at = s + d.len() as u64,
                None => return false,
            }
        }
        true
    }

    fn desc(&self, addr: u64) -> Option<[u8; 16]> {
        self.valid(addr, 16).then_some(())?;
        let mut b = [0u8; 16];
        for (i, v) in b.iter_mut().enumerate() {
            *v = self.byte(addr + i as u64);
        }
        Some(b)
    }
}

/// The model of one direction of a chain: buffers and the stream offset each starts at.
struct Stream {
    segs: Vec<(u64, u32)>,
    starts: Vec<u64>,
}

impl Stream {
    fn new(segs: &[(u64, u32)]) -> Self {
        let mut starts = vec![0];
        for &(_, l) in segs {
            starts.push(starts.last().expect("non-empty") + u64::from(l));
        }
        Stream {
            segs: segs.to_vec(),
            starts,
        }
    }

    /// Guest ranges behind stream bytes `[pos, pos + n)`, merged where contiguous.
    fn pieces(&self, pos: u64, n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let end = pos + n;
        let first = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        for (i, &(addr, _)) in self.segs.iter().enumerate().skip(first) {
            let (s, e) = (self.starts[i], self.starts[i + 1]);
            if s >= end {
                break;
            }
            let (from, to) = (pos.max(s), end.min(e));
            if from < to {
                push_merged(&mut out, addr + (from - s), to - from);
            }
        }
        out
    }
}

fn push_merged(out: &mut Vec<(u64, u64)>, addr: u64, len: u64) {
    match out.last_mut() {
        Some(last) if last.0 + last.1 == addr => last.1 += len,
        _ => out.push((addr, len)),
    }
}

fn merged(segs: &[Segment]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for s in segs {
        assert!(s.len > 0, "zero-length segment");
        push_merged(&mut out, s.addr.0, u64::from(s.len));
    }
    out
}

/// A cursor's model: stream window `[pos, end)`.
#[derive(Clone, Copy, Debug)]
struct Window {
    pos: u64,
    end: u64,
}

impl Window {
    fn remaining(&self) -> u64 {
        self.end - self.pos
    }
}

/// Runs one fuzz input against `Chain::walk`, `Reader` and `Writer` (see the module
/// documentation); panics when they disagree with the model.
pub fn walk(data: &[u8]) {
    let mut input = Input::new(data);
    let layout: &[(u64, usize)] = match input.u8() % 3 {
        0 => &[(0, 0x1_0000)],
        1 => &[(0, 0x8000), (0x8000, 0x8000)],
        _ => &[(0, 0x8000), (0x1_0000, 0x8000)],
    };
    let indirect = input.u8() & 1 == 0;
    let queue_size = match input.u8() % 4 {
        0 => 16,
        1 => u16::from(input.u8()),
        2 => input.u16(),
        _ => 256,
    };
    let table = match input.u8() % 4 {
        0 => 0,
        1 => u64::from(input.u16()),
        2 => 0x8000 - 16 * u64::from(input.u8()),
        _ => input.u64(),
    };
    let head = match input.u8() % 2 {
        0 => u16::from(input.u8()),
        _ => input.u16(),
    };
    let nops = input.u8() % (MAX_OPS + 1);
    let ops = input.bytes(4 * usize::from(nops));

    let mem = anonymous(
        &layout
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect::<Vec<_>>(),
    )
    .expect("guest memory");
    let mut shadow = Shadow {
        regions: Vec::new(),
    };
    for &(start, len) in layout {
        let mut d = vec![0u8; len];
        let image = input.bytes(len);
        d[..image.len()].copy_from_slice(image);
        mem.write_slice(&d, GuestAddress(start))
            .expect("memory image");
        shadow.regions.push((start, d));
    }

    let limits = ChainLimits { indirect };
    let real = Chain::walk(&mem, GuestAddress(table), queue_size, head, &limits);
    let model = ref_walk(&shadow, table, queue_size, head, indirect);
    let (chain, model) = match (real, model) {
        (Ok(c), Ok(m)) => (c, m),
        (Err(_), Err(_)) => return,
        (real, model) => panic!("walk: vstor {real:?}, reference {model:?}"),
    };
    assert_eq!(chain.head(), head, "head");
    assert_eq!(chain.readable_len(), model.rlen, "readable length");
    assert_eq!(chain.writable_len(), model.wlen, "writable length");
    let rs = Stream::new(&model.readable);
    let ws = Stream::new(&model.writable);
    let mut whole = Vec::new();
    chain
        .reader()
        .take_segments(model.rlen, &mut whole)
        .expect("all readable bytes");
    assert_eq!(merged(&whole), rs.pieces(0, model.rlen), "readable buffers");
    whole.clear();
    chain
        .writer()
        .take_segments(model.wlen, &mut whole)
        .expect("all writable bytes");
    assert_eq!(merged(&whole), ws.pieces(0, model.wlen), "writable buffers");

    let mut readers: Vec<(Reader<'_>, Window)> = vec![(
        chain.reader(),
        Window {
            pos: 0,
            end: model.rlen,
        },
    )];
    let mut writers: Vec<(Writer<'_>, Window)> = vec![(
        chain.writer(),
        Window {
            pos: 0,
            end: model.wlen,
        },
    )];
    for op in ops.chunks_exact(4) {
        let kind = op[0] % 10;
        let raw = u64::from(u16::from_le_bytes([op[2], op[3]]));
        if kind < 5 {
            let slot = usize::from(op[1]) % readers.len();
            let (r, w) = &mut readers[slot];
            let n = length(op[1], raw, w.remaining());
            reader_op(&mem, &shadow, &rs, kind, r, w, n, op[2]);
            assert_eq!(r.remaining(), w.remaining(), "reader remaining");
            if kind == 4 && readers.len() < SLOTS {
                let copy = readers[slot].clone();
                readers.push(copy);
            }
        } else {
            let slot = usize::from(op[1]) % writers.len();
            let (wr, w) = &mut writers[slot];
            let n = length(op[1], raw, w.remaining());
            if let Some(tail) = writer_op(&mem, &mut shadow, &ws, kind, wr, w, n, op[2]) {
                if writers.len() < SLOTS {
                    writers.push(tail);
                }
            }
        }
    }
    for (start, d) in &shadow.regions {
        let mut actual = vec![0u8; d.len()];
        mem.read_slice(&mut actual, GuestAddress(*start))
            .expect("read back");
        if let Some(i) = (0..d.len()).find(|&i| actual[i] != d[i]) {
            panic!("guest byte {:#x} differs from the model", start + i as u64);
        }
    }
}

/// An operation's length: raw, or measured back from the end of the cursor.
fn length(sel: u8, raw: u64, remaining: u64) -> u64 {
    if sel & 0x80 != 0 {
        remaining.saturating_sub(raw % 64)
    } else {
        raw
    }
}

#[allow(clippy::too_many_arguments)]
fn reader_op(
    mem: &GuestMemory,
    shadow: &Shadow,
    stream: &Stream,
    kind: u8,
    r: &mut Reader<'_>,
    w: &mut Window,
    n: u64,
    _seed: u8,
) {
    let fits = n <= w.remaining();
    match kind {
        0 | 1 => {
            let n = if kind == 1 { 8 } else { n.min(MAX_DATA) };
            let fits = n <= w.remaining();
            let got = if kind == 1 {
                r.read_obj::<u64>(mem).map(|v| v.to_le_bytes().to_vec())
            } else {
                let mut buf = vec![0u8; n as usize];
                r.read_exact(mem, &mut buf).map(|()| buf)
            };
            assert_eq!(got.is_ok(), fits, "read of {n} with {} left", w.remaining());
            if let Ok(got) = got {
                let want: Vec<u8> = stream
                    .pieces(w.pos, n)
                    .iter()
                    .flat_map(|&(a, l)| (a..a + l).map(|x| shadow.byte(x)))
                    .collect();
                assert!(got == want, "read bytes at stream offset {}", w.pos);
                w.pos += n;
            }
        }
        2 => {
            let mut segs = Vec::new();
            let res = r.take_segments(n, &mut segs);
            assert_eq!(res.is_ok(), fits, "take of {n} with {} left", w.remaining());
            if fits {
                assert_eq!(merged(&segs), stream.pieces(w.pos, n), "readable segments");
                w.pos += n;
            }
        }
        3 => {
            assert_eq!(r.skip(n).is_ok(), fits, "skip of {n}");
            if fits {
                w.pos += n;
            }
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn writer_op<'a>(
    mem: &GuestMemory,
    shadow: &mut Shadow,
    stream: &Stream,
    kind: u8,
    wr: &mut Writer<'a>,
    w: &mut Window,
    n: u64,
    seed: u8,
) -> Option<(Writer<'a>, Window)> {
    let n = match kind {
        6 => 4,
        5 | 9 => n.min(MAX_DATA),
        _ => n,
    };
    let fits = n <= w.remaining();
    let mut tail = None;
    let written: Option<Vec<u8>> = match kind {
        5 | 6 => {
            let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_add(seed) | 1).collect();
            let res = if kind == 6 {
                let v = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
                wr.write_obj(mem, v)
            } else {
                wr.write_all(mem, &data)
            };
            assert_eq!(
                res.is_ok(),
                fits,
                "write of {n} with {} left",
                w.remaining()
            );
            Some(data)
        }
        7 => {
            let mut segs = Vec::new();
            let res = wr.take_segments(n, &mut segs);
            assert_eq!(res.is_ok(), fits, "take of {n} with {} left", w.remaining());
            if fits {
                assert_eq!(merged(&segs), stream.pieces(w.pos, n), "writable segments");
                w.pos += n;
            }
            None
        }
        8 => {
            let res = wr.split_tail("fuzz", n);
            assert_eq!(
                res.is_ok(),
                fits,
                "split_tail of {n} with {} left",
                w.remaining()
            );
            if let Ok(t) = res {
                w.end -= n;
                tail = Some((
                    t,
                    Window {
                        pos: w.end,
                        end: w.end + n,
                    },
                ));
            }
            None
        }
        _ => {
            let res = wr.write_zeroes(mem, n);
            assert_eq!(
                res.is_ok(),
                fits,
                "write_zeroes of {n} with {} left",
                w.remaining()
            );
            Some(vec![0u8; if fits { n as usize } else { 0 }])
        }
    };
    if let (Some(data), true) = (written, fits) {
        let mut bytes = data.iter();
        for (a, l) in stream.pieces(w.pos, n) {
            for x in a..a + l {
                *shadow.byte_mut(x) = *bytes.next().expect("as many bytes as pieces");
            }
        }
        w.pos += n;
    }
    assert_eq!(wr.remaining(), w.remaining(), "writer remaining");
    if let Some((t, tw)) = &tail {
        assert_eq!(t.remaining(), tw.remaining(), "tail remaining");
    }
    tail
}
