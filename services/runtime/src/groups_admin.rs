//! Consumer groups through librdkafka's admin API (ListConsumerGroups,
//! DescribeConsumerGroups), which covers classic groups and KIP-848 (`group.protocol=consumer`)
//! groups alike. rdkafka 0.39 has no safe wrapper for these, so [`native`] calls librdkafka
//! directly; everything it hands back is copied into owned values before its event is freed.
//!
//! What librdkafka 2.12.1 does (`src/rdkafka_admin.c`, `rd_kafka_DescribeConsumerGroups`):
//! every group is first asked with ConsumerGroupDescribe (KIP-848, brokers >= 4.0). When that
//! answers GROUP_ID_NOT_FOUND (the group does not exist, or is a classic group),
//! UNSUPPORTED_VERSION, or the broker lacks the API, librdkafka asks again with the classic
//! DescribeGroups (at most v4). A broker answers DescribeGroups < v6 for a group it does not
//! know with state `Dead`, no members and no error, which librdkafka reports as type
//! `Classic`. So an unknown group comes back as `Dead` without an error on every broker;
//! GROUP_ID_NOT_FOUND is handled as "not found" too in case a later librdkafka passes it on.
//! Kafka's own tool prints "Consumer group 'X' does not exist." for a `Dead` group.
//!
//! librdkafka knows only the states Unknown, PreparingRebalance, CompletingRebalance, Stable,
//! Dead and Empty: the KIP-848 states Assigning, Reconciling and NotReady come back as
//! `Unknown`. ListConsumerGroups lists only groups of protocol type `consumer` or simple groups
//! (offsets only); Connect and other groups are left out.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::groups::Member;
use crate::kafka::KafkaError;

/// One group as DescribeConsumerGroups sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupDescription {
    pub group: String,
    /// librdkafka's state name: Stable, Empty, Dead, PreparingRebalance, CompletingRebalance,
    /// or Unknown (also for the KIP-848 states librdkafka does not name). `Dead` when not found.
    pub state: String,
    /// `Classic`, `Consumer` (KIP-848) or `Unknown`.
    pub group_type: String,
    pub members: Vec<Member>,
    /// The broker does not know the group (see the module doc).
    pub not_found: bool,
}

/// One group as ListConsumerGroups lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupListing {
    pub group: String,
    /// As [`GroupDescription::state`]; `Unknown` from brokers older than ListGroups v4.
    pub state: String,
    /// As [`GroupDescription::group_type`]; `Unknown` from brokers older than ListGroups v5.
    pub group_type: String,
    /// A group without a protocol type: it only has committed offsets.
    pub simple: bool,
}

/// Every consumer group the cluster lists (classic and KIP-848; see the module doc). Brokers
/// that fail to answer are logged and left out.
pub fn list_groups<C: ClientContext>(
    client: &Client<C>,
    timeout: Duration,
) -> Result<Vec<GroupListing>, KafkaError> {
    let (listed, errors) = native::list(client, timeout)?;
    for e in errors {
        tracing::warn!(error = %e, "ListConsumerGroups: a broker's listing failed");
    }
    Ok(listed)
}

/// Describes `groups` (duplicates asked once, answers in the order asked). A group the broker
/// does not know is `not_found`, not an error; any other error of a group is
/// [`KafkaError::DescribeGroup`].
pub fn describe_groups<C: ClientContext>(
    client: &Client<C>,
    groups: &[String],
    timeout: Duration,
) -> Result<Vec<GroupDescription>, KafkaError> {
    let mut seen = BTreeSet::new();
    let unique: Vec<&String> = groups.iter().filter(|g| seen.insert(*g)).collect();
    if unique.is_empty() {
        // librdkafka fails a request without groups.
        return Ok(Vec::new());
    }
    let answers = native::describe(client, &unique, timeout, false)?;
    let mut out = Vec::with_capacity(answers.len());
    for a in answers {
        match outcome(a.error.as_ref().map(|e| e.0), &a.state, a.members.len()) {
            Outcome::Found => out.push(GroupDescription {
                group: a.group,
                state: a.state,
                group_type: a.group_type,
                members: a.members,
                not_found: false,
            }),
            Outcome::NotFound => out.push(GroupDescription {
                group: a.group,
                state: "Dead".to_string(),
                group_type: a.group_type,
                members: Vec::new(),
                not_found: true,
            }),
            Outcome::Failed => {
                let (code, message) = a
                    .error
                    .unwrap_or((RDKafkaErrorCode::Unknown, String::new()));
                return Err(KafkaError::DescribeGroup {
                    group: a.group,
                    code,
                    message,
                });
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Found,
    NotFound,
    Failed,
}

/// What a group's answer means: GROUP_ID_NOT_FOUND, or `Dead` without members (the classic
/// answer for an unknown group), is "not found"; any other error fails.
fn outcome(error: Option<RDKafkaErrorCode>, state: &str, members: usize) -> Outcome {
    match error {
        Some(RDKafkaErrorCode::GroupIdNotFound) => Outcome::NotFound,
        Some(_) => Outcome::Failed,
        None if state == "Dead" && members == 0 => Outcome::NotFound,
        None => Outcome::Found,
    }
}

/// A group's answer as librdkafka gave it.
struct Answer {
    group: String,
    state: String,
    group_type: String,
    members: Vec<Member>,
    error: Option<(RDKafkaErrorCode, String)>,
    /// The caller's operations on the group, when asked for and the broker said.
    authorized_operations: Option<Vec<i32>>,
}

/// What the caller's principal may do with `group` (librdkafka's operation codes), or the
/// group's error (GROUP_AUTHORIZATION_FAILED without DESCRIBE); `None` when the broker does
/// not say.
pub(crate) fn authorized_operations<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    timeout: Duration,
) -> Result<(Option<RDKafkaErrorCode>, Option<Vec<i32>>), KafkaError> {
    let group = group.to_string();
    let answer = native::describe(client, &[&group], timeout, true)?
        .into_iter()
        .next();
    Ok(answer.map_or((None, None), |a| {
        (a.error.map(|(code, _)| code), a.authorized_operations)
    }))
}

/// Group names as C strings; a name with a NUL byte cannot be a group.
fn c_names(groups: &[&String]) -> Result<Vec<CString>, KafkaError> {
    groups
        .iter()
        .map(|g| {
            CString::new(g.as_bytes()).map_err(|_| KafkaError::DescribeGroup {
                group: g.replace('\0', "\\0"),
                code: RDKafkaErrorCode::InvalidArgument,
                message: "a group name cannot contain a NUL byte".to_string(),
            })
        })
        .collect()
}

mod native {
    #![allow(unsafe_code)]

    use std::ffi::c_char;
    use std::ptr;
    use std::time::Duration;

    use rdkafka::bindings as rd;
    use rdkafka::client::{Client, ClientContext};
    use rdkafka::types::RDKafkaErrorCode;

    use super::{Answer, GroupListing, c_names};
    use crate::admin_ffi::{
        admin_error, elements, error_of, operations, request, result_array, string,
    };
    use crate::groups::Member;
    use crate::kafka::KafkaError;

    pub(super) fn list<C: ClientContext>(
        client: &Client<C>,
        timeout: Duration,
    ) -> Result<(Vec<GroupListing>, Vec<String>), KafkaError> {
        const REQUEST: &str = "ListConsumerGroups";
        let event = request(
            client,
            REQUEST,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS,
            timeout,
            false,
            // SAFETY: all three are live for the call; librdkafka copies the options.
            |rk, options, queue| unsafe { rd::rd_kafka_ListConsumerGroups(rk, options, queue) },
        )?;
        // SAFETY: `event` is live; null when it is not a ListConsumerGroups result.
        let result = unsafe { rd::rd_kafka_event_ListConsumerGroups_result(event.0) };
        if result.is_null() {
            return Err(admin_error(
                REQUEST,
                RDKafkaErrorCode::Fail,
                "unexpected event".into(),
            ));
        }
        let (mut valid_cnt, mut errors_cnt) = (0usize, 0usize);
        // SAFETY: `result` lives as long as `event`; the arrays hold `cnt` pointers owned by it.
        let (valid, errors) = unsafe {
            (
                elements(
                    rd::rd_kafka_ListConsumerGroups_result_valid(result, &raw mut valid_cnt),
                    valid_cnt,
                ),
                elements(
                    rd::rd_kafka_ListConsumerGroups_result_errors(result, &raw mut errors_cnt),
                    errors_cnt,
                ),
            )
        };
        let mut listed = Vec::with_capacity(valid.len());
        for &g in valid.iter().filter(|g| !g.is_null()) {
            // SAFETY: `g` is a live listing owned by `result`.
            let (id, state, kind, simple) = unsafe {
                (
                    rd::rd_kafka_ConsumerGroupListing_group_id(g),
                    rd::rd_kafka_consumer_group_state_name(
                        rd::rd_kafka_ConsumerGroupListing_state(g),
                    ),
                    rd::rd_kafka_consumer_group_type_name(rd::rd_kafka_ConsumerGroupListing_type(
                        g,
                    )),
                    rd::rd_kafka_ConsumerGroupListing_is_simple_consumer_group(g) != 0,
                )
            };
            listed.push(GroupListing {
                group: string(id),
                state: name_or_unknown(state),
                group_type: name_or_unknown(kind),
                simple,
            });
        }
        let errors = errors
            .iter()
            .filter_map(|e| error_of(*e))
            .map(|(code, text)| format!("{code:?}: {text}"))
            .collect();
        Ok((listed, errors))
    }

    /// librdkafka's name of a state or type; null (out of range) is `Unknown`.
    fn name_or_unknown(p: *const c_char) -> String {
        if p.is_null() {
            "Unknown".to_string()
        } else {
            string(p)
        }
    }

    pub(super) fn describe<C: ClientContext>(
        client: &Client<C>,
        groups: &[&String],
        timeout: Duration,
        authorized_operations: bool,
    ) -> Result<Vec<Answer>, KafkaError> {
        const REQUEST: &str = "DescribeConsumerGroups";
        let names = c_names(groups)?;
        let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let event = request(
            client,
            REQUEST,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            timeout,
            authorized_operations,
            // SAFETY: `ptrs` holds `ptrs.len()` NUL-terminated names alive in `names` for the
            // call (librdkafka copies them); the other three are live.
            |rk, options, queue| unsafe {
                rd::rd_kafka_DescribeConsumerGroups(
                    rk,
                    ptrs.as_mut_ptr(),
                    ptrs.len(),
                    options,
                    queue,
                );
            },
        )?;
        let descs = result_array(
            &event,
            REQUEST,
            rd::rd_kafka_event_DescribeConsumerGroups_result,
            rd::rd_kafka_DescribeConsumerGroups_result_groups,
        )?;
        let mut out = Vec::with_capacity(descs.len());
        for &d in descs.iter().filter(|d| !d.is_null()) {
            // SAFETY: `d` is a live description owned by `result`.
            let mut ops_cnt = 0usize;
            let (id, error, state, kind, count, ops) = unsafe {
                (
                    rd::rd_kafka_ConsumerGroupDescription_group_id(d),
                    rd::rd_kafka_ConsumerGroupDescription_error(d),
                    rd::rd_kafka_consumer_group_state_name(
                        rd::rd_kafka_ConsumerGroupDescription_state(d),
                    ),
                    rd::rd_kafka_consumer_group_type_name(
                        rd::rd_kafka_ConsumerGroupDescription_type(d),
                    ),
                    rd::rd_kafka_ConsumerGroupDescription_member_count(d),
                    rd::rd_kafka_ConsumerGroupDescription_authorized_operations(
                        d,
                        &raw mut ops_cnt,
                    ),
                )
            };
            let members = (0..count)
                // SAFETY: `idx` < the member count; null is skipped.
                .map(|idx| unsafe { rd::rd_kafka_ConsumerGroupDescription_member(d, idx) })
                .filter(|m| !m.is_null())
                .map(member)
                .collect();
            out.push(Answer {
                group: string(id),
                state: name_or_unknown(state),
                group_type: name_or_unknown(kind),
                members,
                error: error_of(error),
                authorized_operations: operations(ops, ops_cnt),
            });
        }
        Ok(out)
    }

    /// A member and its current assignment (sorted).
    fn member(m: *const rd::rd_kafka_MemberDescription_t) -> Member {
        // SAFETY: `m` is a live, non-null member owned by its group description.
        let (client_id, consumer_id, host, assignment) = unsafe {
            (
                rd::rd_kafka_MemberDescription_client_id(m),
                rd::rd_kafka_MemberDescription_consumer_id(m),
                rd::rd_kafka_MemberDescription_host(m),
                rd::rd_kafka_MemberDescription_assignment(m),
            )
        };
        let list = if assignment.is_null() {
            ptr::null()
        } else {
            // SAFETY: `assignment` is live and owned by the member.
            unsafe { rd::rd_kafka_MemberAssignment_partitions(assignment) }
        };
        let mut partitions = Vec::new();
        if !list.is_null() {
            // SAFETY: a live list owned by the member: `elems` holds `cnt` entries.
            let (cnt, elems) = unsafe { ((*list).cnt, (*list).elems) };
            let cnt = usize::try_from(cnt).unwrap_or(0);
            if !elems.is_null() && cnt > 0 {
                // SAFETY: as above.
                let elems = unsafe { std::slice::from_raw_parts(elems.cast_const(), cnt) };
                partitions = elems
                    .iter()
                    .filter(|e| !e.topic.is_null())
                    .map(|e| (string(e.topic), e.partition))
                    .collect();
            }
        }
        partitions.sort();
        Member {
            member_id: string(consumer_id),
            client_id: string(client_id),
            host: string(host).trim_start_matches('/').to_string(),
            assignment: partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_groups_are_not_found_and_other_errors_fail() {
        use RDKafkaErrorCode as C;
        // Classic DescribeGroups (< v6) answers an unknown group as Dead, no error.
        assert_eq!(outcome(None, "Dead", 0), Outcome::NotFound);
        assert_eq!(
            outcome(Some(C::GroupIdNotFound), "Unknown", 0),
            Outcome::NotFound
        );
        assert_eq!(outcome(None, "Empty", 0), Outcome::Found);
        assert_eq!(outcome(None, "Stable", 2), Outcome::Found);
        assert_eq!(outcome(None, "Unknown", 1), Outcome::Found);
        assert_eq!(
            outcome(Some(C::OperationTimedOut), "Unknown", 0),
            Outcome::Failed
        );
        assert_eq!(
            outcome(Some(C::GroupAuthorizationFailed), "Stable", 0),
            Outcome::Failed
        );
    }

    #[test]
    fn names_with_nul_are_an_error_not_a_panic() {
        let bad = "a\0b".to_string();
        assert!(matches!(
            c_names(&[&bad]),
            Err(KafkaError::DescribeGroup { .. })
        ));
    }
}
