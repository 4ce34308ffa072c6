//! What every direct call of librdkafka's admin API shares (rdkafka 0.39 wraps only some of
//! it): a result queue, options with the request timeout, waiting for the result event and
//! its error, and copying what librdkafka hands back before the event is freed. Used by
//! [`crate::groups_admin`] and [`crate::authorization`].

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
use rdkafka::client::{Client, ClientContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::KafkaError;

/// The request timeout librdkafka accepts (0..=1 h), in ms.
pub(crate) fn timeout_ms(timeout: Duration) -> c_int {
    c_int::try_from(timeout.as_millis().min(3_600_000)).unwrap_or(3_600_000)
}

/// Extra wait for the result event beyond the request timeout: librdkafka posts a
/// timed-out result itself once the request timeout passes.
const POLL_MARGIN: Duration = Duration::from_secs(2);

struct Queue(*mut rd::rd_kafka_queue_t);
impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new (non-null, checked), destroyed once here.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

struct Options(*mut rd::rd_kafka_AdminOptions_t);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AdminOptions_new (non-null, checked), destroyed once;
        // librdkafka copies the options into each request.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.0) }
    }
}

pub(crate) struct Event(pub(crate) *mut rd::rd_kafka_event_t);
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned by rd_kafka_queue_poll (non-null, checked), destroyed once. Every
        // pointer read from it is copied before this runs.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}

pub(crate) fn admin_error(
    request: &'static str,
    code: RDKafkaErrorCode,
    message: String,
) -> KafkaError {
    KafkaError::GroupAdmin {
        request,
        code,
        message,
    }
}

/// A copy of a C string; null is empty.
pub(crate) fn string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka's strings are NUL-terminated and live as long as the object
    // (event, description) they come from, which outlives this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Creates the queue and options (asking for the principal's authorized operations when
/// `authorized_operations`), calls `send`, waits for the result event and checks its error.
/// The client borrow keeps the handle alive throughout.
pub(crate) fn request<C: ClientContext>(
    client: &Client<C>,
    request: &'static str,
    op: rd::rd_kafka_admin_op_t,
    timeout: Duration,
    authorized_operations: bool,
    send: impl FnOnce(
        *mut rd::rd_kafka_t,
        *const rd::rd_kafka_AdminOptions_t,
        *mut rd::rd_kafka_queue_t,
    ),
) -> Result<Event, KafkaError> {
    let rk = client.native_ptr();
    // SAFETY: `rk` is the live handle of `client`.
    let queue = Queue(unsafe { rd::rd_kafka_queue_new(rk) });
    if queue.0.is_null() {
        return Err(admin_error(
            request,
            RDKafkaErrorCode::Fail,
            "no queue".into(),
        ));
    }
    // SAFETY: as above; `op` is a valid admin operation.
    let options = Options(unsafe { rd::rd_kafka_AdminOptions_new(rk, op) });
    if options.0.is_null() {
        return Err(admin_error(
            request,
            RDKafkaErrorCode::Fail,
            "no admin options".into(),
        ));
    }
    let mut errstr = [0 as c_char; 256];
    // SAFETY: `options` is live; `errstr` is writable for its length and librdkafka
    // NUL-terminates what it writes.
    let err = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms(timeout),
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if err != RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(admin_error(request, err.into(), string(errstr.as_ptr())));
    }
    if authorized_operations {
        // SAFETY: `options` is live; a returned error is ours, copied and destroyed here.
        let e =
            unsafe { rd::rd_kafka_AdminOptions_set_include_authorized_operations(options.0, 1) };
        if let Some((code, message)) = error_of(e) {
            // SAFETY: `e` is non-null (error_of said so) and not used after this.
            unsafe { rd::rd_kafka_error_destroy(e) };
            return Err(admin_error(request, code, message));
        }
    }
    send(rk, options.0, queue.0);
    let wait = timeout.saturating_add(POLL_MARGIN);
    // SAFETY: `queue` is live; the event returned is ours to destroy.
    let event = unsafe { rd::rd_kafka_queue_poll(queue.0, timeout_ms(wait)) };
    if event.is_null() {
        return Err(admin_error(
            request,
            RDKafkaErrorCode::OperationTimedOut,
            format!("no answer within {wait:?}"),
        ));
    }
    let event = Event(event);
    // SAFETY: `event` is live.
    let err = unsafe { rd::rd_kafka_event_error(event.0) };
    if err != RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: `event` is live; the string is owned by it and copied here.
        let message = string(unsafe { rd::rd_kafka_event_error_string(event.0) });
        return Err(admin_error(request, err.into(), message));
    }
    Ok(event)
}

/// The `(code, text)` of a librdkafka error object; `None` for null.
pub(crate) fn error_of(e: *const rd::rd_kafka_error_t) -> Option<(RDKafkaErrorCode, String)> {
    if e.is_null() {
        return None;
    }
    // SAFETY: `e` is a live error owned by the description or result it came from.
    let (code, text) = unsafe { (rd::rd_kafka_error_code(e), rd::rd_kafka_error_string(e)) };
    Some((code.into(), string(text)))
}

/// `len` pointers from a librdkafka result array; none when the array is null.
///
/// # Safety
/// `array` must be null or point to `len` readable pointers that outlive the returned slice.
pub(crate) unsafe fn elements<'a, T>(array: *mut *const T, len: usize) -> &'a [*const T] {
    if array.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: by the caller's contract.
    unsafe { std::slice::from_raw_parts(array.cast_const(), len) }
}

/// `cnt` operations from librdkafka's array; `None` when it gave none (not asked for, or
/// the broker did not say).
pub(crate) fn operations(ops: *const rd::rd_kafka_AclOperation_t, cnt: usize) -> Option<Vec<i32>> {
    if ops.is_null() || cnt == 0 {
        return None;
    }
    // SAFETY: librdkafka's array of `cnt` operations, owned by the description it came
    // from, which outlives this copy.
    let ops = unsafe { std::slice::from_raw_parts(ops, cnt) };
    Some(ops.iter().map(|op| *op as i32).collect())
}

/// The array a result event of one request carries (DescribeTopics' topics, DescribeAcls'
/// bindings…): `result_of` reads the typed result (null when the event is another), `array_of`
/// its array. The pointers live as long as `event`.
pub(crate) fn result_array<'e, R, T>(
    event: &'e Event,
    request: &'static str,
    result_of: unsafe extern "C" fn(*mut rd::rd_kafka_event_t) -> *const R,
    array_of: unsafe extern "C" fn(*const R, *mut usize) -> *mut *const T,
) -> Result<&'e [*const T], KafkaError> {
    // SAFETY: `event` is live; `result_of` is librdkafka's accessor for its result type.
    let result = unsafe { result_of(event.0) };
    if result.is_null() {
        return Err(admin_error(
            request,
            RDKafkaErrorCode::Fail,
            "unexpected event".into(),
        ));
    }
    let mut cnt = 0usize;
    // SAFETY: `result` lives as long as `event`; the array holds `cnt` pointers owned by it.
    Ok(unsafe { elements(array_of(result, &raw mut cnt), cnt) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_stay_in_librdkafkas_range() {
        assert_eq!(timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), 3_600_000);
    }
}
