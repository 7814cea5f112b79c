//! Property: no bytes a guest can put in its rings or registers make the host panic, and the
//! device either consumes every published chain or asks for a reset.

use std::sync::{Arc, Mutex};

use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{MmioTransport, STATUS_DEVICE_NEEDS_RESET};
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const MEM: u64 = 4 * MIB;
const QSIZE: u16 = 8;
const ALL: u64 = 0x3f | (1 << 29);

type Shared = Arc<Mutex<MmioTransport<Balloon>>>;

fn guest() -> (Driver<Shared>, Shared) {
    let mem = Arc::new(memfd_guest_memory(&[(0, MEM as usize)]).unwrap());
    let t = Arc::new(Mutex::new(MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        Arc::new(CountingIrq::default()),
    )));
    (Driver::new(t.clone(), mem, 3 * MIB..MEM), t)
}

/// A descriptor whose fields are mostly plausible but often broken.
fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        prop_oneof![0..MEM, any::<u64>(), (MEM - 64)..(MEM + 64)],
        prop_oneof![0u32..2048, any::<u32>()],
        prop_oneof![0u16..8, any::<u16>()],
        prop_oneof![0u16..QSIZE + 2, any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn raw_rings_never_panic(
        queue in 0u16..4,
        descs in proptest::collection::vec(descriptor(), QSIZE as usize),
        heads in proptest::collection::vec(prop_oneof![0u16..QSIZE, any::<u16>()], 0..12),
        avail_idx in prop::option::of(any::<u16>()),
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let (mut d, t) = guest();
        d.init(ALL, QSIZE).unwrap();
        // Buffer contents in the first MiB: PFNs, stats entries, garbage.
        d.write_mem(0, &payload).unwrap();
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            d.write_desc_raw(queue, i as u16, addr, len, flags, next).unwrap();
        }
        let published = heads.len().min(QSIZE as usize);
        for &h in &heads[..published] {
            d.publish_raw(queue, h).unwrap();
        }
        if let Some(idx) = avail_idx {
            d.set_avail_idx_raw(queue, idx).unwrap();
        }
        d.kick(queue);
        d.kick(queue);
        let broken = d.status() & STATUS_DEVICE_NEEDS_RESET != 0;
        let used = d.drain_used(queue).unwrap().len();
        if !broken && avail_idx.is_none() {
            if queue == 2 {
                // The device may keep (at most) one usable stats buffer.
                prop_assert!(used <= published && used + 1 >= published);
            } else {
                // Every chain came back.
                prop_assert_eq!(used, published);
            }
        }
        // The host side stays usable: a reset and a clean inflate work.
        let _ = t.lock().unwrap().device_mut().request_stats();
        d.init(ALL, QSIZE).unwrap();
        let b = d.alloc(4096, 4096).unwrap();
        d.write_mem(b, &5u32.to_le_bytes()).unwrap();
        d.add_chain(0, &[(b, 4, false)]).unwrap();
        d.kick(0);
        prop_assert_eq!(d.drain_used(0).unwrap().len(), 1);
        prop_assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn raw_register_traffic_never_panics(
        ops in proptest::collection::vec(
            (0u64..0x140, prop_oneof![Just(4usize), 1usize..9], any::<u32>(), any::<bool>()),
            0..64,
        ),
    ) {
        let (mut d, t) = guest();
        for (offset, size, value, write) in ops {
            let mut bytes = value.to_le_bytes().to_vec();
            bytes.resize(size, 0);
            let mut tr = t.lock().unwrap();
            if write {
                tr.write(offset, &bytes);
            } else {
                tr.read(offset, &mut bytes);
            }
        }
        // Whatever happened, a reset and a full init succeed.
        d.init(ALL, QSIZE).unwrap();
        prop_assert!(t.lock().unwrap().is_activated());
    }
}
