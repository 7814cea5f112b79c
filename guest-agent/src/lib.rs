//! Guest side of virtio-gcma.

#![cfg_attr(not(feature = "std"), no_std)]
