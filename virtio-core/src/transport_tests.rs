use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::*;
use crate::features::{COMMON_FEATURES, VERSION_1};
use crate::interrupt::CallbackInterrupt;
use crate::memory::anonymous;
use crate::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET};

/// A device that records what the transport asked of it.
#[derive(Default)]
struct Fake {
    log: Arc<Mutex<Vec<String>>>,
    live: Option<Vec<Option<Queue>>>,
    broken: bool,
    state: u8,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> crate::DeviceType {
        crate::DeviceType::Block
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn max_queue_size(&self) -> u16 {
        64
    }
    fn device_features(&self) -> u64 {
        COMMON_FEATURES | 1 << 6
    }
    fn config_len(&self) -> usize {
        8
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        data.fill(offset as u8);
        Ok(())
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn config_generation(&self) -> u32 {
        7
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("activate {:#x}", ctx.features));
        self.live = Some(ctx.queues);
        Ok(())
    }
    fn queue_notify(&mut self, queue: u16) -> Result<()> {
        self.log.lock().unwrap().push(format!("kick {queue}"));
        if queue == 1 {
            self.broken = true;
        }
        Ok(())
    }
    fn completion_fd(&self, _queue: u16) -> Option<RawFd> {
        None
    }
    fn process_completions(&mut self, _queue: u16) -> Result<()> {
        Ok(())
    }
    fn needs_reset(&self) -> bool {
        self.broken
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().push("reset".into());
        self.live = None;
        self.broken = false;
        self.state = 0;
    }
    fn queue_indices(&self, queue: u16) -> Option<(u16, u16, bool)> {
        let q = self.live.as_ref()?.get(usize::from(queue))?.as_ref()?;
        Some((q.next_avail(), q.next_used(), q.event_idx_enabled()))
    }
    fn save_state(&mut self) -> Result<Vec<u8>> {
        Ok(vec![self.state])
    }
    fn restore_state(&mut self, data: &[u8]) -> Result<()> {
        self.state = data[0];
        Ok(())
    }
}

fn transport() -> (Transport, Arc<Mutex<Vec<String>>>) {
    let fake = Fake::default();
    let log = fake.log.clone();
    let irq = Arc::new(CallbackInterrupt(|_| {}));
    let mut t = Transport::new(Box::new(fake), irq);
    t.set_memory(anonymous(&[(GuestAddress(0), 0x10000)]).unwrap());
    (t, log)
}

fn ring(desc: u64) -> QueueConfig {
    QueueConfig {
        size: 16,
        desc_table: desc,
        avail_ring: desc + 0x400,
        used_ring: desc + 0x800,
        ready: true,
    }
}

fn negotiate(t: &mut Transport) {
    t.set_status(ACKNOWLEDGE).unwrap();
    t.set_status(ACKNOWLEDGE | DRIVER).unwrap();
    t.set_driver_features(VERSION_1 | RING_EVENT_IDX).unwrap();
    t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK).unwrap();
}

#[test]
fn features_only_between_driver_and_features_ok() {
    let (mut t, _) = transport();
    assert!(t.set_driver_features(VERSION_1).is_err());
    t.set_status(DRIVER).unwrap_err();
    t.set_status(ACKNOWLEDGE).unwrap();
    t.set_status(ACKNOWLEDGE | DRIVER).unwrap();
    assert!(t.set_driver_features(VERSION_1 | 1 << 7).is_err());
    // FEATURES_OK with nothing acknowledged is refused and the bit stays clear.
    assert!(t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK).is_err());
    assert_eq!(t.status(), ACKNOWLEDGE | DRIVER);
    t.set_driver_features(VERSION_1 | 1 << 6).unwrap();
    t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK).unwrap();
    assert!(t.set_driver_features(VERSION_1).is_err());
    assert_eq!(t.driver_features(), VERSION_1 | 1 << 6);
}

#[test]
fn queue_setup_is_checked() {
    let (mut t, _) = transport();
    let mut q = ring(0x1000);
    q.size = 24;
    assert!(t.set_queue(0, q).is_err(), "not a power of two");
    q.size = 128;
    assert!(t.set_queue(0, q).is_err(), "above the maximum");
    let mut q = ring(0x1008);
    assert!(t.set_queue(0, q).is_err(), "misaligned descriptor table");
    q = ring(0x1000);
    q.used_ring += 2;
    assert!(t.set_queue(0, q).is_err(), "misaligned used ring");
    assert!(t.set_queue(2, ring(0x1000)).is_err(), "no such queue");
    let mut zero = ring(0x1000);
    zero.size = 0;
    t.set_queue(0, zero).unwrap();
    assert_eq!(t.queue(0).unwrap().size, 64, "0 means the maximum");
}

#[test]
fn rings_outside_memory_refuse_driver_ok_with_needs_reset() {
    let (mut t, log) = transport();
    negotiate(&mut t);
    t.set_queue(0, ring(0xfc00)).unwrap();
    let s = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    let err = t.set_status(s | DRIVER_OK).unwrap_err();
    assert!(err.to_string().contains("not inside"), "{err}");
    assert_eq!(t.status() & NEEDS_RESET, NEEDS_RESET);
    assert!(!t.is_active());
    assert!(t.kick(0).is_err());
    t.set_status(0).unwrap();
    assert_eq!(t.status(), 0);
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|l| !l.starts_with("activate")));
}

#[test]
fn live_device_kicks_and_reports_needs_reset() {
    let (mut t, log) = transport();
    assert!(t.kick(0).is_err(), "kick before DRIVER_OK");
    negotiate(&mut t);
    t.set_queue(0, ring(0x1000)).unwrap();
    t.set_queue(1, ring(0x2000)).unwrap();
    let s = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    t.set_status(s).unwrap();
    assert!(t.set_queue(0, ring(0x3000)).is_err(), "live queue");
    t.kick(0).unwrap();
    assert!(t.kick(9).is_err());
    assert_eq!(t.status(), s);
    t.kick(1).unwrap();
    assert_eq!(t.status(), s | NEEDS_RESET);
    t.set_status(0).unwrap();
    let log = log.lock().unwrap();
    assert_eq!(
        log[0],
        format!("activate {:#x}", VERSION_1 | RING_EVENT_IDX)
    );
    assert_eq!(&log[1..], ["kick 0", "kick 1", "reset"]);
}

#[test]
fn save_and_restore_round_trip() {
    let (mut t, _) = transport();
    negotiate(&mut t);
    t.set_queue(0, ring(0x1000)).unwrap();
    t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        .unwrap();
    let blob = t.save().unwrap();

    let (mut u, log) = transport();
    u.restore(&blob).unwrap();
    assert!(u.is_active());
    assert_eq!(u.status(), t.status());
    assert_eq!(u.driver_features(), t.driver_features());
    assert_eq!(u.queue(0).unwrap(), ring(0x1000));
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("activate")));
    assert_eq!(u.save().unwrap(), blob);

    // Corrupt or foreign blobs are refused and leave the device reset.
    let (mut v, _) = transport();
    assert!(v.restore(&blob[..blob.len() - 1]).is_err());
    let mut bad = blob.clone();
    bad[8] = 8; // device type: SCSI
    assert!(v.restore(&bad).unwrap_err().to_string().contains("type"));
    assert_eq!(v.status(), 0);

    // A refused blob resets even a live device.
    assert!(t.restore(&blob[..5]).is_err());
    assert_eq!(t.status(), 0);
    assert!(!t.is_active());
}
