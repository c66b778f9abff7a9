//! [`ScsiServer`]: logical units served as one vhost-user-scsi device on a Unix socket, one
//! frontend at a time, with an optional control socket ([`crate::control`]) that adds,
//! removes, resizes, ejects and loads units while a guest runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{json, Value};
use vstor_blockdev::open::{open, OpenOptions};
use vstor_scsi_disk::target::MAX_LUNS;
use vstor_virtio_scsi::{LunAddr, ScsiOptions, ScsiShared};

use crate::accept::Acceptor;
use crate::error::{Error, Result};
use crate::scsi_backend::ScsiBackend;
use crate::scsi_luns::{LunConfig, UnitType};
use crate::shutdown::{spawn_signal_thread, SignalExit, StopHandle};

/// Everything needed to serve logical units over vhost-user-scsi.
#[derive(Debug, Clone)]
pub struct ServeScsiOptions {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The control socket, if any.
    pub control: Option<PathBuf>,
    /// The units to start with.
    pub luns: Vec<LunConfig>,
    /// How images are opened (cache mode, engine); per-unit format and read-only on top.
    pub open: OpenOptions,
    /// The virtio-scsi device: queues, limits, features.
    pub scsi: ScsiOptions,
}

/// The units of a server and how to open more.
pub struct Units {
    shared: Arc<ScsiShared>,
    open: OpenOptions,
    configs: Mutex<BTreeMap<(u32, u32), LunConfig>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Units {
    /// The device.
    pub fn shared(&self) -> &Arc<ScsiShared> {
        &self.shared
    }

    /// Opens and attaches a unit; returns its (target, LUN).
    pub fn add(&self, mut cfg: LunConfig) -> Result<(u32, u32)> {
        let mut configs = lock(&self.configs);
        let target = cfg.target;
        let lun = match cfg.lun {
            Some(l) => l,
            None => (0..MAX_LUNS)
                .find(|l| !configs.contains_key(&(target, *l)))
                .ok_or_else(|| Error::InvalidOption {
                    name: "lun",
                    value: cfg.image.clone(),
                    reason: format!("target {target} has no free LUN"),
                })?,
        };
        if configs.contains_key(&(target, lun)) {
            return Err(Error::InvalidOption {
                name: "lun",
                value: format!("target={target},lun={lun}"),
                reason: "already attached".into(),
            });
        }
        let unit = cfg.open(lun, &self.open)?;
        self.shared
            .attach(target, lun, unit)
            .map_err(|e| Error::Scsi(e.to_string()))?;
        cfg.lun = Some(lun);
        log::info!("target {target} LUN {lun}: {} attached", cfg.image);
        configs.insert((target, lun), cfg);
        Ok((target, lun))
    }

    /// Detaches a unit and closes its image once its last command finished.
    pub fn remove(&self, target: u32, lun: u32) -> Result<()> {
        let mut configs = lock(&self.configs);
        let unit = self
            .shared
            .detach(target, lun)
            .map_err(|e| Error::Scsi(e.to_string()))?;
        configs.remove(&(target, lun));
        if let Some(dev) = unit.medium() {
            dev.close().map_err(Error::Flush)?;
        }
        log::info!("target {target} LUN {lun}: detached");
        Ok(())
    }

    fn config(&self, target: u32, lun: u32) -> Result<LunConfig> {
        lock(&self.configs)
            .get(&(target, lun))
            .cloned()
            .ok_or_else(|| Error::Scsi(format!("target {target} LUN {lun}: no such unit")))
    }

    fn addr(target: u32, lun: u32) -> LunAddr {
        LunAddr {
            target: target as u8,
            lun: lun as u16,
        }
    }

    /// Resizes a raw image file to `size` bytes while it is served: the file changes length,
    /// the unit gets the image reopened (CAPACITY DATA HAS CHANGED) and the driver a
    /// PARAM_CHANGE event.
    pub fn resize(&self, target: u32, lun: u32, size: u64) -> Result<()> {
        let cfg = self.config(target, lun)?;
        let unit = self
            .shared
            .unit(Self::addr(target, lun))
            .ok_or_else(|| Error::Scsi(format!("target {target} LUN {lun}: no such unit")))?;
        let dev = unit
            .medium()
            .ok_or_else(|| Error::Scsi(format!("target {target} LUN {lun}: no medium")))?;
        let bad = |reason: String| Error::InvalidOption {
            name: "size",
            value: size.to_string(),
            reason,
        };
        if dev.format_name() != "raw"
            || cfg.kind != UnitType::Disk
            || !Path::new(&cfg.image).is_file()
        {
            return Err(bad(format!(
                "{}: online resize needs a raw disk image file (this is {} {})",
                cfg.image,
                if Path::new(&cfg.image).is_file() {
                    dev.format_name()
                } else {
                    "a non-file"
                },
                if cfg.kind == UnitType::Disk {
                    "disk"
                } else {
                    "cd"
                }
            )));
        }
        let bs = u64::from(dev.info().logical_block_size);
        if size == 0 || size % bs != 0 {
            return Err(bad(format!("must be a positive multiple of {bs}")));
        }
        if dev.info().read_only {
            return Err(bad(format!("{} is read-only", cfg.image)));
        }
        dev.flush().map_err(Error::Flush)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&cfg.image)
            .map_err(|e| Error::io("opening the image to resize it", e))?;
        file.set_len(size)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("resizing the image", e))?;
        let mut o = self.open.clone();
        o.format = Some("raw".into());
        o.read_only = cfg.readonly;
        let new = open(&cfg.image, &o).map_err(|source| Error::Open {
            name: cfg.image.clone(),
            source,
        })?;
        unit.replace_medium(Some(new));
        self.shared.capacity_changed(Self::addr(target, lun));
        log::info!("target {target} LUN {lun}: resized to {size} bytes");
        Ok(())
    }

    /// Ejects (`None`) or loads a disc into a CD unit; the driver hears of it through the
    /// unit attention and, if it subscribed, a media-change notification.
    pub fn change_medium(&self, target: u32, lun: u32, image: Option<&str>) -> Result<()> {
        let cfg = self.config(target, lun)?;
        if cfg.kind != UnitType::Cd {
            return Err(Error::Scsi(format!(
                "target {target} LUN {lun}: only CD units have removable media"
            )));
        }
        let unit = self
            .shared
            .unit(Self::addr(target, lun))
            .ok_or_else(|| Error::Scsi(format!("target {target} LUN {lun}: no such unit")))?;
        let new = match image {
            Some(img) => {
                let mut o = self.open.clone();
                o.read_only = true;
                o.format = cfg.format.clone();
                Some(open(img, &o).map_err(|source| Error::Open {
                    name: img.to_string(),
                    source,
                })?)
            }
            None => None,
        };
        unit.replace_medium(new);
        self.shared.media_changed(Self::addr(target, lun));
        if let Some(img) = image {
            let mut configs = lock(&self.configs);
            if let Some(c) = configs.get_mut(&(target, lun)) {
                c.image = img.to_string();
            }
        }
        Ok(())
    }

    /// The units, for the control socket's `list`.
    pub fn list(&self) -> Vec<Value> {
        lock(&self.configs)
            .iter()
            .map(|(&(t, l), c)| {
                let size = self
                    .shared
                    .unit(Self::addr(t, l))
                    .and_then(|u| u.medium())
                    .map(|d| d.info().size);
                json!({
                    "target": t, "lun": l, "image": c.image,
                    "type": if c.kind == UnitType::Cd { "cd" } else { "disk" },
                    "size": size,
                })
            })
            .collect()
    }

    /// Writes back and closes every image.
    pub fn close_all(&self) -> std::result::Result<(), String> {
        let mut first = Ok(());
        for a in self.shared.units() {
            if let Some(dev) = self.shared.unit(a).and_then(|u| u.medium()) {
                if let Err(e) = dev.close() {
                    log::error!("target {} LUN {}: {e}", a.target, a.lun);
                    if first.is_ok() {
                        first = Err(e.to_string());
                    }
                }
            }
        }
        first
    }
}

/// A vhost-user-scsi server bound to its socket.
pub struct ScsiServer {
    units: Arc<Units>,
    acceptor: Acceptor,
    control: Option<std::thread::JoinHandle<()>>,
}

impl ScsiServer {
    /// Opens every unit, binds the vhost-user socket and starts the control socket.
    pub fn bind(opts: ServeScsiOptions) -> Result<Self> {
        let shared = ScsiShared::new(opts.scsi.clone()).map_err(|e| Error::Scsi(e.to_string()))?;
        ScsiBackend::new(shared.clone())?;
        let units = Arc::new(Units {
            shared,
            open: opts.open.clone(),
            configs: Mutex::new(BTreeMap::new()),
        });
        for cfg in opts.luns {
            units.add(cfg)?;
        }
        let mut server = ScsiServer {
            units,
            acceptor: Acceptor::bind(&opts.socket)?,
            control: None,
        };
        if let Some(path) = opts.control {
            let l = crate::control::bind(&path)?;
            let (units, stop) = (server.units.clone(), server.stop_handle());
            server.control = Some(
                std::thread::Builder::new()
                    .name("vstor-control".into())
                    .spawn(move || crate::control::serve(l, path, units, stop))
                    .map_err(|e| Error::io("spawning the control thread", e))?,
            );
        }
        Ok(server)
    }

    /// The units (add and remove them from another thread too).
    pub fn units(&self) -> &Arc<Units> {
        &self.units
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.acceptor.socket
    }

    /// A handle that stops [`ScsiServer::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.acceptor.stop_handle()
    }

    /// Turns SIGINT / SIGTERM into a stop (as [`crate::BlkServer::stop_on_signals`]).
    pub fn stop_on_signals(&self) -> Result<()> {
        let units = self.units.clone();
        spawn_signal_thread(SignalExit {
            stop: self.stop_handle(),
            close: Box::new(move || units.close_all()),
            socket: self.acceptor.socket.clone(),
        })
    }

    /// Serves frontends one after another until stopped, then closes every image and removes
    /// the sockets.
    pub fn run(self) -> Result<()> {
        let ScsiServer {
            units,
            mut acceptor,
            control,
        } = self;
        let served = acceptor.serve(|acceptor| {
            let backend = Arc::new(ScsiBackend::new(units.shared.clone())?);
            acceptor.run_connection("scsi", backend.clone(), |handlers| {
                backend.attach_workers(handlers)
            })?;
            backend.stop_all();
            Ok(())
        });
        let closed = units.close_all().map_err(Error::Scsi);
        if let Some(t) = control {
            let _ = t.join();
        }
        acceptor.finish();
        log::info!("stopped");
        served.and(closed)
    }
}

/// Serves `opts` until SIGINT or SIGTERM.
pub fn serve_scsi(opts: ServeScsiOptions) -> Result<()> {
    let server = ScsiServer::bind(opts)?;
    server.stop_on_signals()?;
    log::info!("listening on {}", server.socket_path().display());
    server.run()
}
