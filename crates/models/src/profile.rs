//! Where the encoder spends its time, stage by stage, for finding the slow
//! part on a device. Off unless `DATAFACTORY_PROFILE_STAGES=1`: then every
//! stage waits for the device before and after it runs (which slows the
//! whole down, as any synchronous profile does) and its wall time is added
//! up per stage name; [`report`] returns the totals. Off, a stage costs one
//! relaxed atomic load.

use candle_core::{Device, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicU8 = AtomicU8::new(2); // 0 off, 1 on, 2 not read yet
static TOTALS: Mutex<BTreeMap<String, (f64, u64)>> = Mutex::new(BTreeMap::new());

fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let on = std::env::var("DATAFACTORY_PROFILE_STAGES").is_ok_and(|v| v == "1");
            ENABLED.store(on as u8, Ordering::Relaxed);
            on
        }
    }
}

/// Runs `f` as the stage `layer.stage`.
pub(crate) fn stage<T>(
    device: &Device,
    layer: &str,
    stage: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let started = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = totals.entry(format!("{layer}.{stage}")).or_insert((0.0, 0));
    entry.0 += seconds;
    entry.1 += 1;
    Ok(out)
}

/// Seconds and calls per stage since the start (empty when off).
pub fn report() -> BTreeMap<String, (f64, u64)> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
