//! Regression tests for defects the coverage-guided fuzz targets (`balloon/fuzz/`) found. Each
//! test names the target that found it and reproduces the defect through the harness, the way
//! a guest would.

use std::sync::{Arc, Mutex};

use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::MmioTransport;
use balloon::virtio_balloon::{Balloon, BalloonConfig};

type Shared<D> = Arc<Mutex<MmioTransport<D>>>;

fn balloon_guest() -> (Driver<Shared<Balloon>>, Shared<Balloon>) {
    let mem = Arc::new(memfd_guest_memory(&[(0, 1 << 20)]).unwrap());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        Arc::new(CountingIrq::default()),
    )));
    (Driver::new(t.clone(), mem, 0x8_0000..0x10_0000), t)
}

/// Found by `mmio_transport`: writing the current `Status` value again to a running device
/// cleared `DRIVER_OK` in the register while the device kept running; writing it once more then
/// activated the device a second time, which dropped the balloon's record of inflated pages
/// (their memory stayed released).
#[test]
fn rewriting_status_keeps_driver_ok_and_does_not_reactivate() {
    let (mut d, t) = balloon_guest();
    d.init(0, 8).unwrap();
    let buf = d.alloc(4, 4).unwrap();
    d.write_mem(buf, &5u32.to_le_bytes()).unwrap();
    d.add_chain(0, &[(buf, 4, false)]).unwrap();
    d.kick(0);
    assert_eq!(d.drain_used(0).unwrap().len(), 1);
    let running = d.status();
    d.set_status(running);
    assert_eq!(d.status(), running, "rewriting Status changed it");
    d.set_status(running);
    let g = t.lock().unwrap();
    assert_eq!(
        g.counters().activations,
        1,
        "the device was activated again"
    );
    assert!(g.is_activated());
    assert_eq!(g.device().status().inflated_pages, 1);
}
