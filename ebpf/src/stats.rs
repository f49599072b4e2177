//! Per-CPU counters, per-session counters and the rate-limited deny-event ring buffer.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use portcullis_common::{DenyEvent, DropReason, Event, FlowKey, NS_PER_SEC};

use crate::{
    DENY_BUCKET, DENY_EVENTS, DENY_EVENTS_PER_SEC, DROP_COUNTERS, EVENT_COUNTERS, SESSION_STATS,
};

#[inline(always)]
pub fn drop(reason: DropReason) -> u32 {
    if let Some(c) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
pub fn event(e: Event) {
    if let Some(c) = EVENT_COUNTERS.get_ptr_mut(e as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn ingress(slot: u32, bytes: u64) {
    if let Some(s) = SESSION_STATS.get_ptr_mut(slot) {
        unsafe {
            (*s).ingress_packets += 1;
            (*s).ingress_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn egress(slot: u32, bytes: u64) {
    if let Some(s) = SESSION_STATS.get_ptr_mut(slot) {
        unsafe {
            (*s).egress_packets += 1;
            (*s).egress_bytes += bytes;
        }
    }
}

/// Emit a deny event if this CPU's token bucket allows it; otherwise count the suppression.
#[inline(always)]
pub fn deny(flow: &FlowKey, slot: u32, reason: DropReason) {
    let rate = DENY_EVENTS_PER_SEC.load();
    if rate == 0 {
        return;
    }
    let Some(b) = DENY_BUCKET.get_ptr_mut(0) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        let elapsed = now - (*b).last_ns;
        if elapsed >= NS_PER_SEC {
            (*b).tokens = rate;
            (*b).last_ns = now;
        } else {
            let add = elapsed * rate / NS_PER_SEC;
            if add > 0 {
                (*b).tokens = if (*b).tokens + add > rate {
                    rate
                } else {
                    (*b).tokens + add
                };
                (*b).last_ns = now;
            }
        }
        if (*b).tokens == 0 {
            event(Event::DenyEventSuppressed);
            return;
        }
        (*b).tokens -= 1;
    }
    let ev = DenyEvent {
        timestamp_ns: now,
        flow: *flow,
        slot,
        reason: reason as u8,
        _pad: [0; 3],
    };
    if DENY_EVENTS.output(&ev, 0).is_err() {
        event(Event::DenyEventSuppressed);
    }
}
