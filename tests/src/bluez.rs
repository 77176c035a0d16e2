//! A private D-Bus system bus with an emulated BlueZ on it, for driving the bridge's real
//! btleplug path (scan, connect, discover, read, subscribe, notify, disconnect) with no
//! Bluetooth hardware.
//!
//! [`PrivateBluez::start`] runs `dbus-daemon` on a socket in a temp dir and
//! `tests/bluez/emulator.py` on it; give the process under test
//! [`PrivateBluez::system_bus_address`] as `DBUS_SYSTEM_BUS_ADDRESS`. Tests script the bands
//! through the emulator's `org.phr.Emulator` interface, called here with `dbus-send`.
//!
//! Needs `dbus-daemon`, `dbus-send` (package `dbus-bin`) and Debian's `/usr/bin/python3` with
//! `python3-dbus` and `python3-gi`; see `tests/bluez/README.md`. `PHR_TEST_PYTHON` overrides
//! the interpreter, `PHR_BLUEZ_EMULATOR` the script.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Full UUIDs of what every emulated band serves (the emulator also accepts `"2a37"`).
pub mod uuids {
    pub const HEART_RATE_SERVICE: &str = "0000180d-0000-1000-8000-00805f9b34fb";
    pub const HEART_RATE_MEASUREMENT: &str = "00002a37-0000-1000-8000-00805f9b34fb";
    pub const BATTERY_SERVICE: &str = "0000180f-0000-1000-8000-00805f9b34fb";
    pub const BATTERY_LEVEL: &str = "00002a19-0000-1000-8000-00805f9b34fb";
    pub const DEVICE_INFORMATION_SERVICE: &str = "0000180a-0000-1000-8000-00805f9b34fb";
    pub const SERIAL_NUMBER: &str = "00002a25-0000-1000-8000-00805f9b34fb";
    pub const MANUFACTURER_NAME: &str = "00002a29-0000-1000-8000-00805f9b34fb";
    pub const VENDOR_SERVICE: &str = "7e4a0000-5048-5200-8000-00805f9b34fb";
    pub const VENDOR_ACTIVITY: &str = "7e4a0001-5048-5200-8000-00805f9b34fb";
    pub const VENDOR_SLEEP: &str = "7e4a0002-5048-5200-8000-00805f9b34fb";
    pub const VENDOR_HISTORY: &str = "7e4a0003-5048-5200-8000-00805f9b34fb";
    pub const VENDOR_STEPS_TODAY: &str = "7e4a0004-5048-5200-8000-00805f9b34fb";
    pub const PAMS_SERVICE: &str = "0000183e-0000-1000-8000-00805f9b34fb";
    pub const PAMS_STEP_COUNTER_SUMMARY: &str = "00002b40-0000-1000-8000-00805f9b34fb";
    pub const PAMS_SLEEP_SUMMARY: &str = "00002b42-0000-1000-8000-00805f9b34fb";
    pub const PAMS_CONTROL_POINT: &str = "00002b43-0000-1000-8000-00805f9b34fb";
    pub const PAMS_CURRENT_SESSION: &str = "00002b44-0000-1000-8000-00805f9b34fb";
    pub const PAMS_SESSION_DESCRIPTOR: &str = "00002b45-0000-1000-8000-00805f9b34fb";
    pub const CURRENT_TIME_SERVICE: &str = "00001805-0000-1000-8000-00805f9b34fb";
    pub const CURRENT_TIME: &str = "00002a2b-0000-1000-8000-00805f9b34fb";
    pub const LOCAL_TIME_INFORMATION: &str = "00002a0f-0000-1000-8000-00805f9b34fb";
}

/// One emulated wearable. It serves Device Information (serial, manufacturer), Battery,
/// Heart Rate, the Physical Activity Monitor Service (step and sleep summaries, control
/// point, current session, session descriptors) and the project's vendor service (activity,
/// sleep, history, steps today); with [`local_time`](Self::local_time) also the Current
/// Time Service.
#[derive(Clone, Debug)]
pub struct EmulatedBand {
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// `"public"` or `"random"`.
    pub address_type: String,
    pub name: String,
    pub serial: String,
    pub manufacturer: String,
    /// Battery level in percent (0x2A19).
    pub battery: u8,
    pub rssi: i16,
    /// Whether it is in range from the start (else it appears after `set_present(.., true)`).
    pub present: bool,
    /// The Activity Current Session value (0x2B44) the band answers reads with; `None`: no
    /// session yet (the characteristic is then not readable).
    pub pams_current_session: Option<Vec<u8>>,
    /// The steps-today value (vendor `7e4a0004`) at the start.
    pub steps_today: u32,
    /// `Some`: the band serves the Current Time Service (0x1805, one primary service, as CTS
    /// 1.1 has it): Current Time 0x2A2B (read, notify; a read answers the emulator's clock in
    /// the band's local time) and Local Time Information 0x2A0F (read) answering these bytes
    /// (time zone in 15-minute steps, DST code; `phr_bridge::decode::local_time::encode`)
    /// until [`PrivateBluez::set_read_value`] changes them. `None`: no Current Time Service,
    /// as on most consumer bands.
    pub local_time: Option<Vec<u8>>,
}

impl EmulatedBand {
    /// A band in range, with a serial derived from its address.
    pub fn new(address: &str, name: &str) -> Self {
        Self {
            address: address.to_ascii_uppercase(),
            address_type: "random".into(),
            name: name.into(),
            serial: format!("SN-{}", address.replace(':', "").to_ascii_uppercase()),
            manufacturer: "PHR Labs".into(),
            battery: 87,
            rssi: -60,
            present: true,
            pams_current_session: None,
            steps_today: 0,
            local_time: None,
        }
    }
}

/// Knobs of the emulated bluetoothd.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// BlueZ caches a value it read and announces it with PropertiesChanged, so btleplug's
    /// `notifications()` also yields read results. On by default, as on real BlueZ.
    pub value_changed_on_read: bool,
    /// Delay between answering `Connect` and `ServicesResolved = true`.
    pub resolve_delay: Duration,
    /// RSSI PropertiesChanged period while discovering (zero: only on discovery).
    pub rssi_interval: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            value_changed_on_read: true,
            resolve_delay: Duration::from_millis(20),
            rssi_interval: Duration::from_secs(1),
        }
    }
}

/// A notification the emulator delivered to a subscribed client.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SentNotification {
    pub address: String,
    /// Full lower-case UUID.
    pub uuid: String,
    #[serde(rename = "value", deserialize_with = "hex_bytes")]
    pub bytes: Vec<u8>,
}

/// What the emulator knows, from `org.phr.Emulator.Status`.
#[derive(Clone, Debug, Deserialize)]
pub struct EmulatorStatus {
    pub powered: bool,
    pub discovering: bool,
    pub bands: Vec<BandStatus>,
    /// Every GATT write a client made, oldest first.
    #[serde(default)]
    pub writes: Vec<Write>,
}

/// One GATT write by a client.
#[derive(Clone, Debug, Deserialize)]
pub struct Write {
    pub address: String,
    pub uuid: String,
    /// Hex.
    pub value: String,
}

impl Write {
    pub fn bytes(&self) -> Vec<u8> {
        hex::decode(&self.value).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct BandStatus {
    pub address: String,
    /// Its D-Bus object path, `/org/bluez/hci0/dev_AA_BB_...`.
    pub path: String,
    pub present: bool,
    /// Exported as a Device1 (found by a scan, not removed since).
    pub discovered: bool,
    pub connected: bool,
    pub services_resolved: bool,
    /// Characteristics with at least one notify session (full lower-case UUIDs).
    pub notifying: Vec<String>,
    /// Successful `Connect` calls so far.
    pub connects: u32,
    pub disconnects: u32,
    pub reads: u32,
    pub rssi: i16,
}

impl EmulatorStatus {
    pub fn band(&self, address: &str) -> Option<&BandStatus> {
        self.bands
            .iter()
            .find(|b| b.address.eq_ignore_ascii_case(address))
    }
}

/// A private `dbus-daemon` with the emulated BlueZ owning `org.bluez` on it; both are killed
/// on drop.
#[derive(Debug)]
pub struct PrivateBluez {
    address: String,
    emulator: Child,
    // Held open: the emulator exits (and stops the bus) when it closes, even if this process
    // is killed before `Drop` runs.
    _emulator_stdin: Option<ChildStdin>,
    bus: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateBluez {
    pub fn start(bands: &[EmulatedBand]) -> Result<Self> {
        Self::start_with(bands, &EmulatorOptions::default())
    }

    pub fn start_with(bands: &[EmulatedBand], options: &EmulatorOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("phr-bluez-").tempdir()?;
        let socket = dir.path().join("system_bus_socket");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, bus_config(&socket))?;
        let mut bus = Command::new(find_program("dbus-daemon", "dbus-daemon")?)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("bus.log"))?)
            .spawn()
            .context("starting dbus-daemon")?;
        // The daemon prints its address once it listens; EOF means it failed to start.
        let mut line = String::new();
        let stdout = bus.stdout.take().context("dbus-daemon stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = bus.kill();
            let _ = bus.wait();
            bail!("dbus-daemon did not start (config {})", conf.display());
        }

        let config = dir.path().join("bands.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&emulator_config(bands, options))?,
        )?;
        let log = dir.path().join("emulator.log");
        let python = std::env::var("PHR_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let emulator = Command::new(&python)
            .arg(emulator_script())
            .arg(&config)
            .args(["--verbose", "--exit-on-stdin-eof", "--kill-on-exit"])
            .arg(bus.id().to_string())
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn();
        let mut emulator = match emulator {
            Ok(c) => c,
            Err(e) => {
                let _ = bus.kill();
                let _ = bus.wait();
                return Err(e).context(format!("starting {python} (apt-get install -y python3)"));
            }
        };
        let stdin = emulator.stdin.take();
        let mut this = Self {
            address,
            emulator,
            _emulator_stdin: stdin,
            bus,
            log,
            dir,
        };
        this.wait_ready(Duration::from_secs(15))?;
        Ok(this)
    }

    /// What the process under test needs as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn system_bus_address(&self) -> &str {
        &self.address
    }

    /// The temp dir holding the bus socket, its config and log, and the emulator's log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The emulator's verbose log so far (every BlueZ call it served), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sets the characteristic's value and notifies it; returns whether a subscribed client
    /// got it (false if the band is not connected or nobody called StartNotify). Only
    /// delivered notifications appear in [`sent`](Self::sent).
    pub fn notify(&self, address: &str, uuid: &str, bytes: &[u8]) -> Result<bool> {
        let out = self.call("Notify", &[&s(address), &s(uuid), &byte_arg(bytes)])?;
        Ok(out == "boolean true")
    }

    /// What the next read of the characteristic returns (no notification).
    pub fn set_read_value(&self, address: &str, uuid: &str, bytes: &[u8]) -> Result<()> {
        self.call("SetReadValue", &[&s(address), &s(uuid), &byte_arg(bytes)])
            .map(drop)
    }

    /// `false`: the band walks out of range: its link drops (Connected=false, GATT objects
    /// removed) and its Device1 vanishes (InterfacesRemoved). `true`: it is back in range and
    /// appears again (immediately if a scan is running, else on the next StartDiscovery).
    pub fn set_present(&self, address: &str, present: bool) -> Result<()> {
        self.call("SetPresent", &[&s(address), &format!("boolean:{present}")])
            .map(drop)
    }

    /// The band drops the link by itself (it stays discoverable).
    pub fn drop_link(&self, address: &str) -> Result<()> {
        self.call("Disconnect", &[&s(address)]).map(drop)
    }

    /// The next `count` `Connect` calls to this band fail (`le-connection-abort-by-local`).
    pub fn fail_connects(&self, address: &str, count: u32) -> Result<()> {
        self.call("FailConnects", &[&s(address), &format!("uint32:{count}")])
            .map(drop)
    }

    /// Changes the RSSI and signals it.
    pub fn set_rssi(&self, address: &str, rssi: i16) -> Result<()> {
        self.call("SetRssi", &[&s(address), &format!("int16:{rssi}")])
            .map(drop)
    }

    /// Every notification delivered so far, in order.
    pub fn sent(&self) -> Result<Vec<SentNotification>> {
        let out = self.call("SentJson", &[])?;
        serde_json::from_str(&out).context("SentJson reply")
    }

    pub fn clear_sent(&self) -> Result<()> {
        self.call("ClearSent", &[]).map(drop)
    }

    pub fn status(&self) -> Result<EmulatorStatus> {
        let out = self.call("Status", &[])?;
        serde_json::from_str(&out).context("Status reply")
    }

    /// Waits until `f` holds for the emulator's status (polled, with a deadline).
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&EmulatorStatus) -> bool,
    ) -> Result<EmulatorStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            if f(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; status {status:?}\nemulator log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a client has subscribed to `uuid` on the band (so a notify will arrive).
    pub async fn wait_notifying(&self, address: &str, uuid: &str, timeout: Duration) -> Result<()> {
        let uuid = full_uuid(uuid);
        self.wait_until(&format!("{address} notifying {uuid}"), timeout, |st| {
            st.band(address)
                .is_some_and(|b| b.notifying.contains(&uuid))
        })
        .await
        .map(drop)
    }

    /// Waits until the band is connected (`true`) or not (`false`).
    pub async fn wait_connected(
        &self,
        address: &str,
        connected: bool,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_until(&format!("{address} connected={connected}"), timeout, |st| {
            st.band(address).is_some_and(|b| b.connected == connected)
        })
        .await
        .map(drop)
    }

    /// Calls `org.phr.Emulator.<method>` and returns the reply as `dbus-send
    /// --print-reply=literal` prints it (trimmed; a string reply is the bare string).
    pub fn call(&self, method: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", self.address))
            .args([
                "--print-reply=literal",
                "--reply-timeout=10000",
                "--dest=org.bluez",
                "/org/phr/emulator",
            ])
            .arg(format!("org.phr.Emulator.{method}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running dbus-send (apt-get install -y dbus-bin)")?;
        if !out.status.success() {
            bail!(
                "org.phr.Emulator.{method}{args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // `org.bluez` is requested after everything is exported: once Status answers,
            // the adapter, bands and control interface are all there.
            let err = match self.call("Status", &[]) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.emulator.try_wait()? {
                bail!(
                    "emulator exited ({status}) before owning org.bluez:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "emulator not ready after {timeout:?}: {err:#}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateBluez {
    fn drop(&mut self) {
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// `tests/bluez/emulator.py`, or `$PHR_BLUEZ_EMULATOR`.
fn emulator_script() -> PathBuf {
    std::env::var_os("PHR_BLUEZ_EMULATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bluez/emulator.py"))
}

fn find_program(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed (apt-get install -y {package})"))
}

/// Anyone may own any name and call anything: it is a throwaway bus in a temp dir.
fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

fn emulator_config(bands: &[EmulatedBand], options: &EmulatorOptions) -> serde_json::Value {
    serde_json::json!({
        "value_changed_on_read": options.value_changed_on_read,
        "resolve_delay_ms": options.resolve_delay.as_millis() as u64,
        "rssi_interval_ms": options.rssi_interval.as_millis() as u64,
        "bands": bands.iter().map(|b| serde_json::json!({
            "address": b.address,
            "address_type": b.address_type,
            "name": b.name,
            "serial": b.serial,
            "manufacturer": b.manufacturer,
            "battery": b.battery,
            "rssi": b.rssi,
            "present": b.present,
            "pams_current_session": b.pams_current_session,
            "steps_today": b.steps_today,
            "local_time": b.local_time,
        })).collect::<Vec<_>>(),
    })
}

fn s(v: &str) -> String {
    format!("string:{v}")
}

fn byte_arg(bytes: &[u8]) -> String {
    let mut arg = String::from("array:byte:");
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            arg.push(',');
        }
        let _ = write!(arg, "{b}");
    }
    arg
}

/// `"2a37"`, `"0x2A37"` or a full UUID -> the full lower-case UUID, as the emulator reports.
fn full_uuid(u: &str) -> String {
    let u = u.trim().to_ascii_lowercase();
    let u = u.strip_prefix("0x").unwrap_or(&u);
    match u.len() {
        4 => format!("0000{u}-0000-1000-8000-00805f9b34fb"),
        8 => format!("{u}-0000-1000-8000-00805f9b34fb"),
        _ => u.to_owned(),
    }
}

fn hex_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    hex::decode(&s).map_err(|_| serde::de::Error::custom(format!("bad hex {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_args() {
        assert_eq!(full_uuid("0x2A37"), uuids::HEART_RATE_MEASUREMENT);
        assert_eq!(full_uuid(uuids::VENDOR_SLEEP), uuids::VENDOR_SLEEP);
        assert_eq!(byte_arg(&[]), "array:byte:");
        assert_eq!(byte_arg(&[0, 72, 255]), "array:byte:0,72,255");
    }

    /// The control plane against a live emulator (no btleplug here: the tests crate does not
    /// link it; the bridge's own end-to-end tests drive the BlueZ side).
    #[tokio::test]
    #[ignore = "needs dbus-daemon, dbus-send and python3-dbus/python3-gi; .ci/run installs them and runs ignored tests"]
    async fn control_plane() -> Result<()> {
        let a = "C0:FF:EE:00:00:01";
        let mut hidden = EmulatedBand::new("C0:FF:EE:00:00:02", "Band 2");
        hidden.present = false;
        // Band 3 tells its zone (Current Time Service); the others have no such service.
        let c = "C0:FF:EE:00:00:03";
        let mut zoned = EmulatedBand::new(c, "Band 3");
        zoned.local_time = Some(vec![0xEC, 0x04]);
        let bluez = PrivateBluez::start(&[EmulatedBand::new(a, "Band 1"), hidden, zoned])?;
        assert!(bluez.system_bus_address().starts_with("unix:path="));
        let st = bluez.status()?;
        assert!(st.powered && !st.discovering);
        assert!(st.band(a).is_some_and(|b| b.present && !b.discovered));
        // Nobody subscribed: the value is kept for reads but not sent.
        assert!(!bluez.notify(a, "2a37", &[0, 72])?);
        bluez.set_read_value(a, uuids::BATTERY_LEVEL, &[])?;
        bluez.set_read_value(c, uuids::LOCAL_TIME_INFORMATION, &[0x24, 0x00])?;
        let no_cts = bluez
            .set_read_value(a, uuids::LOCAL_TIME_INFORMATION, &[0x24, 0x00])
            .unwrap_err();
        assert!(
            format!("{no_cts:#}").contains("NoSuchCharacteristic"),
            "{no_cts:#}"
        );
        bluez.set_present("C0:FF:EE:00:00:02", true)?;
        bluez.set_rssi(a, -40)?;
        bluez.fail_connects(a, 1)?;
        let st = bluez.status()?;
        assert_eq!(st.bands.len(), 3);
        assert!(st.bands.iter().all(|b| b.present && b.rssi != 0));
        assert!(bluez.sent()?.is_empty());
        assert!(bluez
            .call(
                "Notify",
                &[&s("00:00:00:00:00:00"), &s("2a37"), "array:byte:1"]
            )
            .is_err());
        Ok(())
    }
}
