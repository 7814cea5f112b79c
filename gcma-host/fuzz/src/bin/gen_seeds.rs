//! Writes the seed corpus of every target into `seeds/<target>/` (run from the fuzz directory:
//! `cargo run --bin gen_seeds`). The seeds are the scenarios of the property test and the
//! regression tests of `gcma-host/tests/range_model.rs`, encoded in the targets' input format.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use gcma_host::range::SEARCH_BUDGET;
use gcma_host_fuzz::range::{encode, Input, Op};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn range_seeds() -> Vec<(&'static str, Input)> {
    use Op::*;
    let mut v = vec![
        // block_at_address_zero_and_one
        (
            "block_at_zero_and_one",
            Input {
                base: 0,
                len: 16,
                ops: vec![
                    Reserve { at: 1, len: 1 },
                    Alloc { len: 1, align: 1 },
                    FreeAddr { at: 1 },
                    FreeAddr { at: 0 },
                ],
            },
        ),
        // one_unit_neighbours_merge
        (
            "one_unit_neighbours_merge",
            Input {
                base: 0,
                len: 4,
                ops: vec![
                    Alloc { len: 1, align: 1 },
                    Alloc { len: 1, align: 1 },
                    Alloc { len: 1, align: 1 },
                    Alloc { len: 1, align: 1 },
                    FreeAddr { at: 1 },
                    FreeAddr { at: 3 },
                    FreeAddr { at: 2 },
                    FreeAddr { at: 0 },
                    Alloc { len: 4, align: 4 },
                ],
            },
        ),
        // sub_range_unknown_and_double_free_are_errors
        (
            "interior_unknown_double_free",
            Input {
                base: 0x1000,
                len: 0x1000,
                ops: vec![
                    Alloc {
                        len: 0x100,
                        align: 1,
                    },
                    FreeAddr { at: 0x1010 },
                    FreeAddr { at: 0x1800 },
                    FreeAddr { at: 0 },
                    FreeAddr { at: 0x1000 },
                    FreeAddr { at: 0x1000 },
                ],
            },
        ),
        // reserve_busy_and_out_of_span
        (
            "reserve_busy_out_of_span",
            Input {
                base: 100,
                len: 100,
                ops: vec![
                    Reserve { at: 150, len: 10 },
                    Reserve { at: 155, len: 1 },
                    Reserve { at: 140, len: 20 },
                    Reserve { at: 99, len: 2 },
                    Reserve { at: 199, len: 2 },
                    Reserve {
                        at: u64::MAX,
                        len: 2,
                    },
                ],
            },
        ),
        // aligned_search_is_exact
        (
            "aligned_search_exact",
            Input {
                base: 0,
                len: 0x10000,
                ops: vec![
                    Reserve { at: 0, len: 0x1000 },
                    Reserve {
                        at: 0x2000,
                        len: 0xe000,
                    },
                    Alloc {
                        len: 0x1000,
                        align: 0x1000,
                    },
                    Alloc { len: 1, align: 1 },
                ],
            },
        ),
    ];
    // misaligned_holes_fall_back_without_failing: more misaligned holes than the search budget.
    let n = u64::from(SEARCH_BUDGET) + 8;
    let mut ops = Vec::new();
    for i in 0..n {
        ops.push(Reserve { at: 8 * i, len: 1 });
        ops.push(Reserve {
            at: 8 * i + 4,
            len: 4,
        });
    }
    ops.push(Alloc { len: 2, align: 4 });
    ops.push(Reserve {
        at: 8 * n + 2,
        len: 2,
    });
    ops.push(Alloc { len: 2, align: 4 });
    v.push((
        "misaligned_holes",
        Input {
            base: 0,
            len: 8 * n + 8,
            ops,
        },
    ));
    // bad_requests_change_nothing
    v.push((
        "bad_requests",
        Input {
            base: 0,
            len: 64,
            ops: vec![
                Alloc { len: 0, align: 1 },
                Alloc { len: 1, align: 0 },
                Alloc { len: 1, align: 3 },
                Alloc { len: 65, align: 1 },
                Alloc {
                    len: 1,
                    align: 1 << 63,
                },
                FreeAddr { at: 0 },
                AllocIn {
                    len: 8,
                    align: 1,
                    lo: 60,
                    hi: 64,
                },
                AllocIn {
                    len: 1,
                    align: 1,
                    lo: 10,
                    hi: 10,
                },
            ],
        },
    ));
    // top_down_and_windows
    v.push((
        "top_down_and_windows",
        Input {
            base: 0,
            len: 1 << 20,
            ops: vec![
                TopDown {
                    len: 0x1000,
                    align: 0x1000,
                },
                AllocIn {
                    len: 0x10,
                    align: 0x100,
                    lo: 0x150,
                    hi: 0x1000,
                },
                AllocIn {
                    len: 0x10,
                    align: 1,
                    lo: 0x205,
                    hi: 0x300,
                },
            ],
        },
    ));
    // new_rejects_bad_spans: a span ending exactly at 2^64.
    v.push((
        "span_ends_at_top",
        Input {
            base: 1,
            len: u64::MAX,
            ops: vec![
                TopDown { len: 1, align: 1 },
                Alloc { len: 1, align: 1 },
                Free { i: 0 },
                Free { i: 0 },
            ],
        },
    ));
    // many_blocks_stay_balanced, shortened: interleaved one-unit blocks, every other one freed.
    let mut ops: Vec<Op> = (0..200).map(|_| Alloc { len: 1, align: 1 }).collect();
    ops.extend((0..100).map(|i| FreeAddr { at: 2 * i }));
    ops.push(Alloc { len: 2, align: 1 });
    ops.push(Alloc { len: 1, align: 1 });
    v.push((
        "many_blocks",
        Input {
            base: 0,
            len: 1 << 20,
            ops,
        },
    ));
    v
}

fn main() -> std::io::Result<()> {
    let seeds = range_seeds();
    for (name, input) in &seeds {
        let bytes = encode(input);
        // The seed must mean what it says: it decodes back to the same operations.
        let back = Input::arbitrary_take_rest(Unstructured::new(&bytes)).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{input:?}"), "seed {name}");
        gcma_host_fuzz::range::run(&bytes);
        write("range_allocator", name, &bytes)?;
    }
    println!("wrote {} seeds to seeds/range_allocator", seeds.len());
    Ok(())
}
