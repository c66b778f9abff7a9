//! The scsi-disk fuzz entry point, shared by the cargo-fuzz target `scsi_cdb` and `cargo test`:
//! arbitrary bytes become a sequence of commands (CDB, data-out, allocation length, I_T nexus)
//! run against a logical unit on a small memory device. Beyond "no panic" it checks what every
//! command must satisfy: a status SCSI knows, sense only with CHECK CONDITION (fixed format
//! 0x70/0xF0 or descriptor 0x72), never more data-in than the allocation, and a read-only unit
//! whose medium never changes. Flag bit 2 runs a CD-ROM unit instead (never writes its medium),
//! with host ejects and loads between commands.

use std::sync::Arc;

use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::BlockDev;

use crate::lun::{status, Command, LogicalUnit, LunOptions};

/// Runs one fuzz input.
pub fn cdb(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let read_only = flags & 1 != 0;
    let cdrom = flags & 4 != 0;
    let dev = Arc::new(
        MemoryDev::new(
            1 << 20,
            MemoryOptions {
                logical_block_size: if flags & 2 != 0 { 4096 } else { 512 },
                read_only: false,
            },
        )
        .expect("memory device"),
    );
    dev.write_at(&[0xa5; 4096], 0).expect("seed the medium");
    let opts = LunOptions {
        read_only,
        ..Default::default()
    };
    let lun = if cdrom {
        LogicalUnit::new_cdrom(Some(dev.clone()), opts)
    } else {
        LogicalUnit::new(dev.clone(), opts)
    };
    let before = (read_only || cdrom).then(|| snapshot(&*dev));
    let mut data_in = vec![0u8; 1 << 16];
    while rest.len() >= 4 {
        let cdb_len = [6usize, 10, 12, 16][(rest[0] & 3) as usize];
        let out_len = usize::from(rest[1]) * 16;
        let alloc = usize::from(rest[2]) * 64;
        let nexus = u64::from(rest[3] & 3);
        if cdrom {
            match rest[3] >> 5 {
                4 => drop(lun.eject(false)),
                5 => drop(lun.eject(true)),
                6 => drop(lun.load(dev.clone())),
                _ => {}
            }
        }
        rest = &rest[4..];
        let cdb: Vec<u8> = rest.iter().copied().take(cdb_len).collect();
        rest = &rest[cdb.len()..];
        let out: Vec<u8> = rest.iter().copied().take(out_len).collect();
        rest = &rest[out.len()..];
        if cdb.is_empty() {
            break;
        }
        let mut cmd = Command {
            cdb: &cdb,
            data_out: &out,
            data_in: &mut data_in[..alloc],
            nexus,
        };
        let o = lun.execute(&mut cmd);
        let known = [
            status::GOOD,
            status::CHECK_CONDITION,
            status::CONDITION_MET,
            status::BUSY,
            status::RESERVATION_CONFLICT,
        ];
        assert!(
            known.contains(&o.status),
            "status {:#x} for {cdb:02x?}",
            o.status
        );
        assert!(
            o.data_in_len <= alloc,
            "data-in {} > allocation {alloc} for {cdb:02x?}",
            o.data_in_len
        );
        if o.status == status::CHECK_CONDITION {
            assert!(
                matches!(o.sense.first(), Some(0x70 | 0xf0 | 0x72)),
                "sense {:02x?}",
                o.sense
            );
        } else {
            assert!(
                o.sense.is_empty(),
                "sense without CHECK CONDITION for {cdb:02x?}"
            );
        }
    }
    if let Some(b) = before {
        assert!(snapshot(&*dev) == b, "a read-only unit changed its medium");
    }
}

fn snapshot(dev: &dyn BlockDev) -> Vec<u8> {
    let mut v = vec![0u8; dev.info().size as usize];
    dev.read_at(&mut v, 0).expect("read the medium");
    v
}

#[cfg(test)]
mod tests {
    /// Seeded random inputs, and inputs built around every opcode of the table.
    #[test]
    fn random_and_table_driven_inputs() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let len = (next() % 300) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            super::cdb(&data);
        }
        let kinds = [(crate::LunKind::Disk, 0u8), (crate::LunKind::Cdrom, 4u8)];
        for (op, flags) in kinds
            .iter()
            .flat_map(|&(k, f)| crate::table::for_kind(k).map(move |op| (op, f)))
        {
            for round in 0..20u64 {
                let mut data = vec![flags | (round & 3) as u8];
                let n = op.usage.len();
                data.extend_from_slice(&[
                    [6u8, 10, 12, 16]
                        .iter()
                        .position(|&l| l as usize >= n)
                        .unwrap_or(3) as u8,
                    (next() % 40) as u8,
                    (next() % 80) as u8,
                    1,
                ]);
                data.push(op.opcode);
                data.extend((1..n).map(|i| (next() as u8) & op.usage[i]));
                data.extend((0..1024).map(|_| next() as u8));
                super::cdb(&data);
            }
        }
    }
}
