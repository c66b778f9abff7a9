//! COMPARE AND WRITE is atomic against plain writes from other threads (other queues): a
//! WRITE that arrives while a COMPARE AND WRITE is between its compare and its write runs
//! after it, never in between.

use std::sync::Arc;
use std::time::Duration;

use vstor_blockdev::memory::MemoryDev;
use vstor_blockdev::{BlockDev, BlockInfo, IoQueue, QueueOptions};
use vstor_scsi_disk::{status, Command, LogicalUnit, LunOptions};

/// A memory device whose reads take 300 ms: the compare of a COMPARE AND WRITE is slow.
struct SlowReads(MemoryDev);

impl BlockDev for SlowReads {
    fn info(&self) -> &BlockInfo {
        self.0.info()
    }
    fn open_queue(&self, opts: &QueueOptions) -> vstor_blockdev::Result<Box<dyn IoQueue>> {
        self.0.open_queue(opts)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vstor_blockdev::Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> vstor_blockdev::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> vstor_blockdev::Result<()> {
        self.0.flush()
    }
}

fn run(lun: &LogicalUnit, cdb: &[u8], out: &[u8]) -> u8 {
    let mut r = lun.execute(&mut Command {
        cdb,
        data_out: out,
        data_in: &mut [],
        nexus: 1,
    });
    if r.status == status::CHECK_CONDITION && r.sense.get(12) == Some(&0x29) {
        // The power-on unit attention of the first command.
        r = lun.execute(&mut Command {
            cdb,
            data_out: out,
            data_in: &mut [],
            nexus: 1,
        });
    }
    r.status
}

#[test]
fn a_write_during_compare_and_write_waits_for_it() {
    let dev: Arc<dyn BlockDev> = Arc::new(SlowReads(
        MemoryDev::new(1 << 20, Default::default()).unwrap(),
    ));
    let lun = Arc::new(LogicalUnit::new(dev.clone(), LunOptions::default()));
    run(&lun, &[0, 0, 0, 0, 0, 0], &[]);
    // COMPARE AND WRITE LBA 4, 1 block: zeroes -> 0xAA.
    let mut caw_out = vec![0u8; 512];
    caw_out.extend_from_slice(&[0xaa; 512]);
    let l2 = lun.clone();
    let caw = std::thread::spawn(move || {
        let cdb = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0];
        run(&l2, &cdb, &caw_out)
    });
    std::thread::sleep(Duration::from_millis(100));
    // WRITE(10) LBA 4 with 0xBB while the compare is reading.
    let status_w = run(&lun, &[0x2a, 0, 0, 0, 0, 4, 0, 0, 1, 0], &[0xbb; 512]);
    assert_eq!(status_w, status::GOOD);
    assert_eq!(caw.join().unwrap(), status::GOOD, "compared against zeroes");
    let mut got = [0u8; 512];
    dev.read_at(&mut got, 4 * 512).unwrap();
    assert_eq!(
        got, [0xbb; 512],
        "the WRITE ran after the COMPARE AND WRITE, not inside it"
    );
}
