//! The virtio-gcma wire format, shared by the device (host, `balloon::gcma`) and the driver
//! (`guest-agent`).
//!
//! `no_std`, no dependencies, no `unsafe`: every structure is encoded and decoded field by field in
//! little-endian, so the same code runs in the VMM and in a kernel-less guest payload.
//! `balloon/PROTOCOL.md` is the prose version of this module.
//!
//! A request is one descriptor chain:
//!
//! * device-readable: a [`RequestHeader`] ([`REQUEST_HEADER_LEN`] bytes), followed for `PUT` and
//!   `STORE` by exactly one page ([`PAGE_SIZE`] bytes) of data;
//! * device-writable: for `GET` and `LOAD` one page for the data, for `STATS` a buffer of
//!   [`StatEntry`]s (a multiple of [`STAT_ENTRY_LEN`], at most one page), then a [`Response`]
//!   ([`RESPONSE_LEN`] bytes). The response is always the *last* [`RESPONSE_LEN`] bytes of the
//!   device-writable part.
//!
//! Buffers may be split over descriptors at any byte boundary (`VIRTIO_F_ANY_LAYOUT` semantics):
//! only the byte streams matter.
//!
//! One file on purpose: it is the code form of `balloon/PROTOCOL.md`, every encoder beside its
//! decoder, so that the two and the document are read and changed together.
//!
//! Kept as one unit although it is long: it is the whole wire format, request and response
//! types side by side with their encoders, decoders and round-trip tests, mirroring PROTOCOL.md.

/// virtio device id of virtio-gcma.
///
/// OASIS assigns small ids (1..=63 fit the modern virtio-pci id scheme `0x1040 + id`; the ones
/// given out so far are below 64). `0x4743` (ASCII "GC") is far outside that range, so it cannot
/// collide with a future assignment. It fits the 32-bit `DeviceID` register of virtio-mmio and
/// the vhost-user protocol, the two transports this device is offered on; it is *not* expressible
/// as a virtio-pci device id.
pub const VIRTIO_ID_GCMA: u32 = 0x4743;

pub use crate::PAGE_SIZE;

/// Queue index of the control queue (`ALLOC_CONTIG`, `FREE_CONTIG`, `STATS`).
pub const CONTROL_QUEUE: u16 = 0;
/// Queue index of the cleancache queue.
pub const CLEANCACHE_QUEUE: u16 = 1;
/// Queue index of the frontswap queue.
pub const FRONTSWAP_QUEUE: u16 = 2;
/// Number of queues the device always has.
pub const NUM_QUEUES: usize = 3;
/// Largest queue size the device offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Feature bit: contiguous grants (`ALLOC_CONTIG`, `FREE_CONTIG`) are served.
pub const VIRTIO_GCMA_F_CONTIG: u64 = 1 << 0;
/// Feature bit: the cleancache queue is served.
pub const VIRTIO_GCMA_F_CLEANCACHE: u64 = 1 << 1;
/// Feature bit: the frontswap queue is served.
pub const VIRTIO_GCMA_F_FRONTSWAP: u64 = 1 << 2;

/// Shared-memory region id of the grant window (where granted runs of pool pages appear).
pub const SHM_GRANT_WINDOW: u8 = 0;

/// Length of the device configuration space in bytes.
pub const CONFIG_LEN: usize = 24;
/// Config offset of `le64 pool_nr_pages`: pages in the host pool.
pub const CONFIG_POOL_NR_PAGES: usize = 0;
/// Config offset of `le64 window_nr_pages`: pages in the grant window (shared-memory region 0).
pub const CONFIG_WINDOW_NR_PAGES: usize = 8;
/// Config offset of `le32 page_size`: always [`PAGE_SIZE`].
pub const CONFIG_PAGE_SIZE: usize = 16;
/// Config offset of `le32 reserved` (reads as zero).
pub const CONFIG_RESERVED: usize = 20;

/// The device configuration space, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Pages in the host pool.
    pub pool_nr_pages: u64,
    /// Pages in the grant window.
    pub window_nr_pages: u64,
    /// Page size in bytes.
    pub page_size: u32,
}

impl Config {
    /// Encodes the config space.
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        put_u64(&mut b, CONFIG_POOL_NR_PAGES, self.pool_nr_pages);
        put_u64(&mut b, CONFIG_WINDOW_NR_PAGES, self.window_nr_pages);
        put_u32(&mut b, CONFIG_PAGE_SIZE, self.page_size);
        b
    }

    /// Decodes the config space.
    pub fn decode(b: &[u8; CONFIG_LEN]) -> Self {
        Config {
            pool_nr_pages: get_u64(b, CONFIG_POOL_NR_PAGES),
            window_nr_pages: get_u64(b, CONFIG_WINDOW_NR_PAGES),
            page_size: get_u32(b, CONFIG_PAGE_SIZE),
        }
    }
}

/// Request type codes. The high byte is the queue the request belongs on.
pub mod req {
    /// Control: grant a contiguous run of pages.
    pub const ALLOC_CONTIG: u32 = 0x0001;
    /// Control: return a grant.
    pub const FREE_CONTIG: u32 = 0x0002;
    /// Control: read the device's counters.
    pub const STATS: u32 = 0x0003;
    /// Cleancache: create a private ephemeral pool.
    pub const NEW_POOL: u32 = 0x0101;
    /// Cleancache: put a clean page.
    pub const PUT: u32 = 0x0102;
    /// Cleancache: get (and remove) a page.
    pub const GET: u32 = 0x0103;
    /// Cleancache: drop one page.
    pub const FLUSH_PAGE: u32 = 0x0104;
    /// Cleancache: drop every page of an object.
    pub const FLUSH_OBJECT: u32 = 0x0105;
    /// Cleancache: destroy a pool.
    pub const DESTROY_POOL: u32 = 0x0106;
    /// Frontswap: store a swapped-out page.
    pub const STORE: u32 = 0x0201;
    /// Frontswap: load a page.
    pub const LOAD: u32 = 0x0202;
    /// Frontswap: invalidate one page.
    pub const INVALIDATE_PAGE: u32 = 0x0203;
    /// Frontswap: invalidate a whole swap area.
    pub const INVALIDATE_AREA: u32 = 0x0204;
}

/// Length of the request header in bytes.
pub const REQUEST_HEADER_LEN: usize = 48;

/// The raw request header, as laid out on the wire:
///
/// | offset | field | meaning |
/// |---|---|---|
/// | 0 | `le32 type` | one of [`req`] |
/// | 4 | `le32 pool` | cleancache pool id, or frontswap area |
/// | 8 | `le64 object[3]` | cleancache object id |
/// | 32 | `le64 index` | cleancache page index (< 2³²), frontswap offset, `ALLOC_CONTIG` page count, `FREE_CONTIG` window offset |
/// | 40 | `le64 arg` | `ALLOC_CONTIG` alignment in pages (power of two); otherwise 0 |
///
/// Fields a request type does not use must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RequestHeader {
    /// Request type ([`req`]).
    pub req_type: u32,
    /// Cleancache pool id or frontswap area.
    pub pool: u32,
    /// Cleancache object id.
    pub object: [u64; 3],
    /// Page index, swap offset, page count or window offset, depending on the type.
    pub index: u64,
    /// Extra argument (alignment for `ALLOC_CONTIG`).
    pub arg: u64,
}

impl RequestHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        put_u32(&mut b, 0, self.req_type);
        put_u32(&mut b, 4, self.pool);
        put_u64(&mut b, 8, self.object[0]);
        put_u64(&mut b, 16, self.object[1]);
        put_u64(&mut b, 24, self.object[2]);
        put_u64(&mut b, 32, self.index);
        put_u64(&mut b, 40, self.arg);
        b
    }

    /// Decodes a header (any bit pattern decodes; [`Request::from_header`] validates).
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Self {
        RequestHeader {
            req_type: get_u32(b, 0),
            pool: get_u32(b, 4),
            object: [get_u64(b, 8), get_u64(b, 16), get_u64(b, 24)],
            index: get_u64(b, 32),
            arg: get_u64(b, 40),
        }
    }
}

/// Key of a cleancache page: (pool, object, index), tmem's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PageKey {
    /// Cleancache pool id (from `NEW_POOL`).
    pub pool: u32,
    /// Object id.
    pub object: [u64; 3],
    /// Page index inside the object.
    pub index: u32,
}

/// Key of a frontswap page: (area, offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SwapKey {
    /// Swap area.
    pub area: u32,
    /// Page offset inside the area.
    pub offset: u64,
}

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Grant `nr_pages` contiguous pages, placed in the grant window (shared-memory region 0) at
    /// an offset aligned to `align_pages` pages.
    AllocContig {
        /// Pages wanted (≥ 1).
        nr_pages: u64,
        /// Alignment in pages (a power of two ≥ 1).
        align_pages: u64,
    },
    /// Return the grant that starts at byte `offset` of the grant window.
    FreeContig {
        /// Offset inside shared-memory region 0 returned by `ALLOC_CONTIG`.
        offset: u64,
    },
    /// Read the device counters into the writable buffer.
    Stats,
    /// Create a cleancache pool.
    NewPool,
    /// Put a clean page.
    Put(PageKey),
    /// Get a clean page.
    Get(PageKey),
    /// Drop a clean page.
    FlushPage(PageKey),
    /// Drop every page of an object.
    FlushObject {
        /// Pool id.
        pool: u32,
        /// Object id.
        object: [u64; 3],
    },
    /// Destroy a cleancache pool.
    DestroyPool {
        /// Pool id.
        pool: u32,
    },
    /// Store a swapped-out page.
    Store(SwapKey),
    /// Load a swapped-out page.
    Load(SwapKey),
    /// Invalidate one swapped-out page.
    InvalidatePage(SwapKey),
    /// Invalidate a swap area.
    InvalidateArea {
        /// Swap area.
        area: u32,
    },
}

/// Why a header is not a valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than [`REQUEST_HEADER_LEN`] bytes.
    Short,
    /// The type code is not one of [`req`].
    UnknownType(u32),
    /// A field the type does not use is not zero.
    ReservedNonZero,
    /// A cleancache index does not fit 32 bits.
    IndexTooLarge,
    /// `ALLOC_CONTIG` of zero pages.
    ZeroPages,
    /// `ALLOC_CONTIG` alignment is zero or not a power of two.
    BadAlignment,
}

impl Request {
    /// Parses a request from the first [`REQUEST_HEADER_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
        let head: &[u8; REQUEST_HEADER_LEN] = bytes
            .get(..REQUEST_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ParseError::Short)?;
        Request::from_header(&RequestHeader::decode(head))
    }

    /// Validates a decoded header.
    pub fn from_header(h: &RequestHeader) -> Result<Request, ParseError> {
        let no_object = h.object == [0; 3];
        let page_key = || -> Result<PageKey, ParseError> {
            if h.arg != 0 {
                return Err(ParseError::ReservedNonZero);
            }
            let index = u32::try_from(h.index).map_err(|_| ParseError::IndexTooLarge)?;
            Ok(PageKey {
                pool: h.pool,
                object: h.object,
                index,
            })
        };
        let swap_key = || -> Result<SwapKey, ParseError> {
            if !no_object || h.arg != 0 {
                return Err(ParseError::ReservedNonZero);
            }
            Ok(SwapKey {
                area: h.pool,
                offset: h.index,
            })
        };
        let only = |ok: bool, r: Request| {
            if ok {
                Ok(r)
            } else {
                Err(ParseError::ReservedNonZero)
            }
        };
        match h.req_type {
            req::ALLOC_CONTIG => {
                if h.pool != 0 || !no_object {
                    return Err(ParseError::ReservedNonZero);
                }
                if h.index == 0 {
                    return Err(ParseError::ZeroPages);
                }
                if !h.arg.is_power_of_two() {
                    return Err(ParseError::BadAlignment);
                }
                Ok(Request::AllocContig {
                    nr_pages: h.index,
                    align_pages: h.arg,
                })
            }
            req::FREE_CONTIG => only(
                h.pool == 0 && no_object && h.arg == 0,
                Request::FreeContig { offset: h.index },
            ),
            req::STATS => only(
                h.pool == 0 && no_object && h.index == 0 && h.arg == 0,
                Request::Stats,
            ),
            req::NEW_POOL => only(
                h.pool == 0 && no_object && h.index == 0 && h.arg == 0,
                Request::NewPool,
            ),
            req::PUT => page_key().map(Request::Put),
            req::GET => page_key().map(Request::Get),
            req::FLUSH_PAGE => page_key().map(Request::FlushPage),
            req::FLUSH_OBJECT => only(
                h.index == 0 && h.arg == 0,
                Request::FlushObject {
                    pool: h.pool,
                    object: h.object,
                },
            ),
            req::DESTROY_POOL => only(
                no_object && h.index == 0 && h.arg == 0,
                Request::DestroyPool { pool: h.pool },
            ),
            req::STORE => swap_key().map(Request::Store),
            req::LOAD => swap_key().map(Request::Load),
            req::INVALIDATE_PAGE => swap_key().map(Request::InvalidatePage),
            req::INVALIDATE_AREA => only(
                no_object && h.index == 0 && h.arg == 0,
                Request::InvalidateArea { area: h.pool },
            ),
            other => Err(ParseError::UnknownType(other)),
        }
    }

    /// The header that encodes this request.
    pub fn header(&self) -> RequestHeader {
        let mut h = RequestHeader::default();
        match *self {
            Request::AllocContig {
                nr_pages,
                align_pages,
            } => {
                h.req_type = req::ALLOC_CONTIG;
                h.index = nr_pages;
                h.arg = align_pages;
            }
            Request::FreeContig { offset } => {
                h.req_type = req::FREE_CONTIG;
                h.index = offset;
            }
            Request::Stats => h.req_type = req::STATS,
            Request::NewPool => h.req_type = req::NEW_POOL,
            Request::Put(k) | Request::Get(k) | Request::FlushPage(k) => {
                h.req_type = match self {
                    Request::Put(_) => req::PUT,
                    Request::Get(_) => req::GET,
                    _ => req::FLUSH_PAGE,
                };
                h.pool = k.pool;
                h.object = k.object;
                h.index = u64::from(k.index);
            }
            Request::FlushObject { pool, object } => {
                h.req_type = req::FLUSH_OBJECT;
                h.pool = pool;
                h.object = object;
            }
            Request::DestroyPool { pool } => {
                h.req_type = req::DESTROY_POOL;
                h.pool = pool;
            }
            Request::Store(k) | Request::Load(k) | Request::InvalidatePage(k) => {
                h.req_type = match self {
                    Request::Store(_) => req::STORE,
                    Request::Load(_) => req::LOAD,
                    _ => req::INVALIDATE_PAGE,
                };
                h.pool = k.area;
                h.index = k.offset;
            }
            Request::InvalidateArea { area } => {
                h.req_type = req::INVALIDATE_AREA;
                h.pool = area;
            }
        }
        h
    }

    /// Encodes the request header.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        self.header().encode()
    }

    /// The queue this request must be sent on.
    pub fn queue(&self) -> u16 {
        queue_of_type(self.header().req_type)
    }

    /// The feature bit that must be negotiated for this request.
    pub fn feature(&self) -> u64 {
        match self.queue() {
            CONTROL_QUEUE => match self {
                Request::Stats => 0,
                _ => VIRTIO_GCMA_F_CONTIG,
            },
            CLEANCACHE_QUEUE => VIRTIO_GCMA_F_CLEANCACHE,
            _ => VIRTIO_GCMA_F_FRONTSWAP,
        }
    }

    /// What data the request carries besides header and response.
    pub fn data(&self) -> DataDir {
        match self {
            Request::Put(_) | Request::Store(_) => DataDir::ToDevice,
            Request::Get(_) | Request::Load(_) => DataDir::FromDevice,
            Request::Stats => DataDir::Stats,
            _ => DataDir::None,
        }
    }

    /// Exact number of device-readable bytes the chain must carry.
    pub fn readable_len(&self) -> usize {
        match self.data() {
            DataDir::ToDevice => REQUEST_HEADER_LEN + PAGE_SIZE,
            _ => REQUEST_HEADER_LEN,
        }
    }

    /// Whether `writable_len` device-writable bytes is a valid size for this request.
    pub fn writable_len_ok(&self, writable_len: usize) -> bool {
        match self.data() {
            DataDir::FromDevice => writable_len == PAGE_SIZE + RESPONSE_LEN,
            DataDir::Stats => writable_len
                .checked_sub(RESPONSE_LEN)
                .is_some_and(|n| n <= PAGE_SIZE && n % STAT_ENTRY_LEN == 0),
            _ => writable_len == RESPONSE_LEN,
        }
    }
}

/// The queue a request type code belongs on (the high byte of the code).
pub fn queue_of_type(req_type: u32) -> u16 {
    ((req_type >> 8) & 0xffff) as u16
}

/// Which data buffer a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Header and response only.
    None,
    /// One page, device-readable, after the header.
    ToDevice,
    /// One page, device-writable, before the response.
    FromDevice,
    /// A device-writable buffer of [`StatEntry`]s before the response.
    Stats,
}

/// Per-request status codes (`le32 status` of the [`Response`]).
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// `GET`/`LOAD`: no such page. `FLUSH_PAGE`/`INVALIDATE_PAGE`: nothing to drop.
    pub const MISS: u32 = 1;
    /// `PUT`: the page was not kept (ephemeral puts may be dropped; a later `GET` misses).
    pub const NOT_STORED: u32 = 2;
    /// `ALLOC_CONTIG`: no run long enough (`value0` = [`super::no_space`] reason, `value1` =
    /// the device's own granted pages, or its window's free pages; never pool-wide counts).
    pub const NO_SPACE: u32 = 3;
    /// `STORE` refused; no copy of the key is left (`value0` = [`super::reject`] reason).
    pub const REJECTED: u32 = 4;
    /// The cleancache pool id is not one of this device's pools.
    pub const UNKNOWN_POOL: u32 = 5;
    /// `FREE_CONTIG`: no grant starts at this window offset.
    pub const UNKNOWN_GRANT: u32 = 6;
    /// Malformed request: unknown type, wrong queue, reserved fields set, wrong buffer sizes or
    /// directions, buffers outside guest memory.
    pub const BAD_REQUEST: u32 = 7;
    /// The request needs a feature that was not negotiated.
    pub const UNSUPPORTED: u32 = 8;
    /// Host I/O failed (backing file, memfd).
    pub const IO_ERROR: u32 = 9;
    /// The grant could not be mapped into the grant window (it was returned to the pool).
    pub const MAP_FAILED: u32 = 10;
    /// Number of status codes (counters are indexed by status).
    pub const COUNT: usize = 11;

    /// Short lower-case name of a status, for metrics and logs.
    pub fn name(status: u32) -> &'static str {
        match status {
            OK => "ok",
            MISS => "miss",
            NOT_STORED => "not_stored",
            NO_SPACE => "no_space",
            REJECTED => "rejected",
            UNKNOWN_POOL => "unknown_pool",
            UNKNOWN_GRANT => "unknown_grant",
            BAD_REQUEST => "bad_request",
            UNSUPPORTED => "unsupported",
            IO_ERROR => "io_error",
            MAP_FAILED => "map_failed",
            _ => "invalid",
        }
    }
}

/// `value0` of a `NO_SPACE` response. `value1` is always one of the device's own numbers: a
/// guest never learns how much of the pool other guests hold.
pub mod no_space {
    /// Fewer non-granted pages in the pool than asked (`value1` = pages this device holds
    /// granted now).
    pub const EXHAUSTED: u64 = 1;
    /// Grants fragment the pool, or the search for a run reached its limit (`value1` = pages this
    /// device holds granted now).
    pub const FRAGMENTED: u64 = 2;
    /// The grant window has no room for the run (`value1` = free pages of the window).
    pub const WINDOW_FULL: u64 = 3;
}

/// `value0` of a `REJECTED` response.
pub mod reject {
    /// No pool page could be had.
    pub const POOL_FULL: u64 = 1;
    /// The put-back store is full.
    pub const PUT_BACK_LIMIT: u64 = 2;
    /// Writing the backing file failed.
    pub const BACKING_IO: u64 = 3;
    /// The client reached its page limit.
    pub const CLIENT_LIMIT: u64 = 4;
}

/// Length of the response in bytes.
pub const RESPONSE_LEN: usize = 24;

/// The response, the last [`RESPONSE_LEN`] device-writable bytes of every chain:
/// `le32 status`, `le32 reserved`, `le64 value0`, `le64 value1`.
///
/// | request | `value0` | `value1` |
/// |---|---|---|
/// | `ALLOC_CONTIG` OK | offset of the grant in shared-memory region 0 | pages granted |
/// | `FREE_CONTIG` OK | pages freed | 0 |
/// | `STATS` OK | entries written | entries the device has |
/// | `NEW_POOL` OK | pool id | 0 |
/// | `FLUSH_OBJECT` / `INVALIDATE_AREA` OK | pages dropped | 0 |
/// | `NO_SPACE` | [`no_space`] reason | pages this device holds granted / its window's free pages |
/// | `REJECTED` | [`reject`] reason | 0 |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Response {
    /// One of [`status`].
    pub status: u32,
    /// First result value.
    pub value0: u64,
    /// Second result value.
    pub value1: u64,
}

impl Response {
    /// A response with only a status.
    pub const fn status(status: u32) -> Self {
        Response {
            status,
            value0: 0,
            value1: 0,
        }
    }

    /// Encodes the response.
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        put_u32(&mut b, 0, self.status);
        put_u64(&mut b, 8, self.value0);
        put_u64(&mut b, 16, self.value1);
        b
    }

    /// Decodes a response.
    pub fn decode(b: &[u8; RESPONSE_LEN]) -> Self {
        Response {
            status: get_u32(b, 0),
            value0: get_u64(b, 8),
            value1: get_u64(b, 16),
        }
    }
}

/// Length of one stats entry in bytes.
pub const STAT_ENTRY_LEN: usize = 16;

/// One counter of a `STATS` answer: `le32 tag`, `le32 reserved`, `le64 value`. Drivers must
/// ignore tags they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatEntry {
    /// One of [`stat`].
    pub tag: u32,
    /// The value.
    pub value: u64,
}

impl StatEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> [u8; STAT_ENTRY_LEN] {
        let mut b = [0u8; STAT_ENTRY_LEN];
        put_u32(&mut b, 0, self.tag);
        put_u64(&mut b, 8, self.value);
        b
    }

    /// Decodes an entry.
    pub fn decode(b: &[u8; STAT_ENTRY_LEN]) -> Self {
        StatEntry {
            tag: get_u32(b, 0),
            value: get_u64(b, 8),
        }
    }
}

/// Stats tags, in the order the device writes them. Counters cover this device (this VM) since it
/// was created, across resets; the pool and window sizes and the grant gauges are current values.
pub mod stat {
    /// Pages in the host pool.
    pub const POOL_NR_PAGES: u32 = 0;
    /// Pages in the grant window.
    pub const WINDOW_NR_PAGES: u32 = 1;
    /// Grants held now.
    pub const GRANTS: u32 = 2;
    /// Pages granted now.
    pub const GRANTED_PAGES: u32 = 3;
    /// Cleancache puts kept.
    pub const CLEANCACHE_PUTS: u32 = 4;
    /// Cleancache gets that hit.
    pub const CLEANCACHE_SUCC_GETS: u32 = 5;
    /// Cleancache gets that missed.
    pub const CLEANCACHE_FAILED_GETS: u32 = 6;
    /// Cleancache flushes (page, object and pool).
    pub const CLEANCACHE_FLUSHES: u32 = 7;
    /// Frontswap stores accepted.
    pub const FRONTSWAP_SUCC_STORES: u32 = 8;
    /// Frontswap stores rejected.
    pub const FRONTSWAP_FAILED_STORES: u32 = 9;
    /// Frontswap loads that hit.
    pub const FRONTSWAP_LOADS: u32 = 10;
    /// Frontswap invalidations (page and area).
    pub const FRONTSWAP_INVALIDATES: u32 = 11;
    /// Requests answered `BAD_REQUEST`.
    pub const BAD_REQUESTS: u32 = 12;
    /// Number of tags the device writes.
    pub const COUNT: usize = 13;
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> [Request; 13] {
        let k = PageKey {
            pool: 3,
            object: [1, 2, 3],
            index: 7,
        };
        let s = SwapKey {
            area: 1,
            offset: 1 << 40,
        };
        [
            Request::AllocContig {
                nr_pages: 512,
                align_pages: 512,
            },
            Request::FreeContig {
                offset: 0x1_0000_0000,
            },
            Request::Stats,
            Request::NewPool,
            Request::Put(k),
            Request::Get(k),
            Request::FlushPage(k),
            Request::FlushObject {
                pool: 3,
                object: [9, 8, 7],
            },
            Request::DestroyPool { pool: 3 },
            Request::Store(s),
            Request::Load(s),
            Request::InvalidatePage(s),
            Request::InvalidateArea { area: 1 },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for r in all_requests() {
            assert_eq!(Request::parse(&r.encode()), Ok(r));
            assert!(usize::from(r.queue()) < NUM_QUEUES, "{r:?}");
        }
    }

    #[test]
    fn queues_follow_the_type_code() {
        let q: [u16; 13] = [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2];
        for (r, q) in all_requests().iter().zip(q) {
            assert_eq!(r.queue(), q, "{r:?}");
        }
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let mut h = Request::Stats.header();
        h.index = 1;
        assert_eq!(Request::from_header(&h), Err(ParseError::ReservedNonZero));
        h = Request::Put(PageKey::default()).header();
        h.index = 1 << 32;
        assert_eq!(Request::from_header(&h), Err(ParseError::IndexTooLarge));
        h = Request::AllocContig {
            nr_pages: 1,
            align_pages: 1,
        }
        .header();
        h.arg = 3;
        assert_eq!(Request::from_header(&h), Err(ParseError::BadAlignment));
        h.arg = 0;
        assert_eq!(Request::from_header(&h), Err(ParseError::BadAlignment));
        h.arg = 1;
        h.index = 0;
        assert_eq!(Request::from_header(&h), Err(ParseError::ZeroPages));
        h.req_type = 0x0301;
        assert_eq!(
            Request::from_header(&h),
            Err(ParseError::UnknownType(0x0301))
        );
        assert_eq!(Request::parse(&[0u8; 47]), Err(ParseError::Short));
    }

    #[test]
    fn response_and_stats_round_trip() {
        let r = Response {
            status: status::NO_SPACE,
            value0: no_space::FRAGMENTED,
            value1: u64::MAX,
        };
        assert_eq!(Response::decode(&r.encode()), r);
        let e = StatEntry {
            tag: stat::BAD_REQUESTS,
            value: 42,
        };
        assert_eq!(StatEntry::decode(&e.encode()), e);
        let c = Config {
            pool_nr_pages: 1 << 20,
            window_nr_pages: 1 << 21,
            page_size: PAGE_SIZE as u32,
        };
        assert_eq!(Config::decode(&c.encode()), c);
    }

    #[test]
    fn writable_lengths() {
        assert!(Request::Get(PageKey::default()).writable_len_ok(PAGE_SIZE + RESPONSE_LEN));
        assert!(!Request::Get(PageKey::default()).writable_len_ok(RESPONSE_LEN));
        assert!(Request::Stats.writable_len_ok(RESPONSE_LEN + 2 * STAT_ENTRY_LEN));
        assert!(!Request::Stats.writable_len_ok(RESPONSE_LEN + 5));
        assert!(!Request::Stats.writable_len_ok(RESPONSE_LEN - 1));
        assert!(Request::NewPool.writable_len_ok(RESPONSE_LEN));
        assert!(!Request::NewPool.writable_len_ok(RESPONSE_LEN + 1));
    }
}
