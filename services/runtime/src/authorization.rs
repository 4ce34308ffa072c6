//! At start-up, a service asks the cluster what its principal may do with its topics and its
//! group (DescribeTopics and DescribeConsumerGroups with authorized operations, KIP-430) and
//! stops, naming each missing ACL, when one it needs ([`crate::acls::service_acls`]) is not
//! there — instead of stalling on a group it cannot join or failing record after record.
//! A cluster that does not say (no authorizer answers with every operation; an old broker
//! with none) or cannot be asked now (the service then waits for it as before) is not a
//! reason to stop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::types::RDKafkaErrorCode;

use crate::acls::{Acl, Operation, ResourceType, service_acls};
use crate::kafka::{KafkaError, KafkaSettings};
use crate::topology::Service;

/// What the cluster says a principal may do with one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Granted {
    /// These operations (`All` covers every one).
    Operations(BTreeSet<Granting>),
    /// Not even DESCRIBE: the resource was refused (TOPIC/GROUP_AUTHORIZATION_FAILED).
    Nothing,
    /// The cluster did not say.
    Unknown,
}

/// An operation as the cluster grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Granting {
    All,
    Op(Operation),
}

impl Granted {
    fn allows(&self, op: Operation) -> bool {
        match self {
            Granted::Operations(ops) => {
                ops.contains(&Granting::All) || ops.contains(&Granting::Op(op))
            }
            Granted::Nothing => false,
            Granted::Unknown => true,
        }
    }
}

/// The needed ACLs the cluster's answers do not grant (a resource it did not say anything
/// about is not missing).
pub fn missing<'a>(
    needed: &'a [Acl],
    topics: &BTreeMap<String, Granted>,
    (group_name, group): (&str, &Granted),
) -> Vec<&'a Acl> {
    needed
        .iter()
        .filter(|a| {
            let granted = match a.resource_type {
                ResourceType::Topic => topics.get(&a.resource).unwrap_or(&Granted::Unknown),
                ResourceType::Group if a.resource == group_name => group,
                // Its readers' throwaway groups (prefixed): not asked about.
                ResourceType::Group => &Granted::Unknown,
                // No API says what a principal may do with a transactional id before it uses
                // one; the producer's first InitProducerId fails, naming it.
                ResourceType::TransactionalId => &Granted::Unknown,
            };
            !granted.allows(a.operation)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the principal is not authorized for what this service does: {}. The ACLs a service needs: `verdict topology acls --service {service}`",
    missing.join("; ")
)]
pub struct NotAuthorized {
    pub service: String,
    /// `WRITE on topic audit (an output)`, one per missing ACL.
    pub missing: Vec<String>,
}

/// Fails naming every ACL `service` needs and the cluster says its principal lacks.
pub async fn check(
    kafka: &KafkaSettings,
    service: &Service,
    exactly_once: bool,
) -> Result<(), NotAuthorized> {
    let needed = service_acls(service, "", exactly_once);
    let topics: Vec<String> = needed
        .iter()
        .filter(|a| a.resource_type == ResourceType::Topic)
        .map(|a| a.resource.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let group = service.consumer_group.clone();
    let kafka = kafka.clone();
    let answers = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
        let admin = kafka.admin()?;
        // Short: a cluster that is not up yet is waited for by the engine, not here.
        let timeout = Duration::from_secs(5);
        Ok((native::topics(admin.inner(), &topics, timeout)?, {
            let (error, ops) =
                crate::groups_admin::authorized_operations(admin.inner(), &group, timeout)?;
            granted(error, ops)
        }))
    })
    .await;
    let (topics, group) = match answers {
        Ok(Ok(answers)) => answers,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot ask the cluster what this service may do; going on");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(error = %e, "authorization check failed; going on");
            return Ok(());
        }
    };
    let missing: Vec<String> = missing(&needed, &topics, (&service.consumer_group, &group))
        .into_iter()
        .map(|a| {
            format!(
                "{} on {} {} ({})",
                match a.operation {
                    Operation::Read => "READ",
                    Operation::Write => "WRITE",
                    Operation::Create => "CREATE",
                    Operation::Describe => "DESCRIBE",
                    Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
                },
                match a.resource_type {
                    ResourceType::Topic => "topic",
                    ResourceType::Group => "group",
                    ResourceType::TransactionalId => "transactional id",
                },
                a.resource,
                a.why
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NotAuthorized {
            service: service.name.clone(),
            missing,
        })
    }
}

/// Every ACL of the cluster (DescribeAcls, any resource, principal and operation); needs
/// DESCRIBE on the cluster (the admin).
pub async fn describe_acls(kafka: &KafkaSettings) -> Result<Vec<crate::acls::Binding>, KafkaError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let admin = kafka.admin()?;
        native::acls(admin.inner(), Duration::from_secs(10))
    })
    .await
    .map_err(|e| KafkaError::Join(e.to_string()))?
}

/// The answer for one resource: its error, or the operations librdkafka listed (`None` when
/// the broker did not say).
fn granted(error: Option<RDKafkaErrorCode>, ops: Option<Vec<i32>>) -> Granted {
    use rdkafka::bindings::rd_kafka_AclOperation_t as Op;
    match error {
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed,
        ) => Granted::Nothing,
        Some(_) => Granted::Unknown,
        None => match ops {
            None => Granted::Unknown,
            Some(ops) => Granted::Operations(
                ops.into_iter()
                    .filter_map(|op| match op {
                        x if x == Op::RD_KAFKA_ACL_OPERATION_ALL as i32 => Some(Granting::All),
                        x if x == Op::RD_KAFKA_ACL_OPERATION_READ as i32 => {
                            Some(Granting::Op(Operation::Read))
                        }
                        x if x == Op::RD_KAFKA_ACL_OPERATION_WRITE as i32 => {
                            Some(Granting::Op(Operation::Write))
                        }
                        x if x == Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS as i32 => {
                            Some(Granting::Op(Operation::DescribeConfigs))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
        },
    }
}

mod native {
    #![allow(unsafe_code)]

    use std::collections::BTreeMap;
    use std::ffi::{CString, c_char};
    use std::time::Duration;

    use rdkafka::bindings as rd;
    use rdkafka::client::{Client, ClientContext};
    use rdkafka::types::RDKafkaErrorCode;

    use super::{Granted, granted};
    use crate::acls::{Binding, Operation, PatternType, ResourceType};
    use crate::admin_ffi::{admin_error, error_of, operations, request, result_array, string};
    use crate::kafka::KafkaError;

    fn c_string(request: &'static str, s: &str) -> Result<CString, KafkaError> {
        CString::new(s.as_bytes()).map_err(|_| {
            admin_error(
                request,
                RDKafkaErrorCode::InvalidArgument,
                format!("NUL in {s:?}"),
            )
        })
    }

    struct Topics(*mut rd::rd_kafka_TopicCollection_t);
    impl Drop for Topics {
        fn drop(&mut self) {
            // SAFETY: made by rd_kafka_TopicCollection_of_topic_names (non-null, checked),
            // destroyed once here.
            unsafe { rd::rd_kafka_TopicCollection_destroy(self.0) }
        }
    }

    pub(super) fn topics<C: ClientContext>(
        client: &Client<C>,
        names: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, Granted>, KafkaError> {
        const REQUEST: &str = "DescribeTopics";
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let c_names = names
            .iter()
            .map(|n| c_string(REQUEST, n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = c_names.iter().map(|n| n.as_ptr()).collect();
        // SAFETY: `ptrs` holds `ptrs.len()` NUL-terminated names alive in `c_names`; librdkafka
        // copies them.
        let collection = Topics(unsafe {
            rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len())
        });
        if collection.0.is_null() {
            return Err(admin_error(
                REQUEST,
                RDKafkaErrorCode::Fail,
                "no topic collection".into(),
            ));
        }
        let event = request(
            client,
            REQUEST,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            timeout,
            true,
            // SAFETY: all four are live for the call; librdkafka copies the collection.
            |rk, options, queue| unsafe {
                rd::rd_kafka_DescribeTopics(rk, collection.0, options, queue);
            },
        )?;
        let descs = result_array(
            &event,
            REQUEST,
            rd::rd_kafka_event_DescribeTopics_result,
            rd::rd_kafka_DescribeTopics_result_topics,
        )?;
        let mut out = BTreeMap::new();
        for &d in descs.iter().filter(|d| !d.is_null()) {
            let mut ops_cnt = 0usize;
            // SAFETY: `d` is a live description owned by `result`.
            let (name, error, ops) = unsafe {
                (
                    rd::rd_kafka_TopicDescription_name(d),
                    rd::rd_kafka_TopicDescription_error(d),
                    rd::rd_kafka_TopicDescription_authorized_operations(d, &raw mut ops_cnt),
                )
            };
            let error = error_of(error).map(|(code, _)| code);
            out.insert(string(name), granted(error, operations(ops, ops_cnt)));
        }
        Ok(out)
    }

    pub(super) fn acls<C: ClientContext>(
        client: &Client<C>,
        timeout: Duration,
    ) -> Result<Vec<Binding>, KafkaError> {
        const REQUEST: &str = "DescribeAcls";
        let mut errstr = [0 as c_char; 256];
        // SAFETY: the pointers are null (any) or valid; `errstr` is writable for its length.
        let filter = unsafe {
            rd::rd_kafka_AclBindingFilter_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY,
                std::ptr::null(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
                std::ptr::null(),
                std::ptr::null(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if filter.is_null() {
            return Err(admin_error(
                REQUEST,
                RDKafkaErrorCode::InvalidArgument,
                string(errstr.as_ptr()),
            ));
        }
        let filter = Filter(filter);
        let event = request(
            client,
            REQUEST,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
            timeout,
            false,
            // SAFETY: all four are live for the call; librdkafka copies the filter.
            |rk, options, queue| unsafe { rd::rd_kafka_DescribeAcls(rk, filter.0, options, queue) },
        )?;
        let bindings = result_array(
            &event,
            REQUEST,
            rd::rd_kafka_event_DescribeAcls_result,
            rd::rd_kafka_DescribeAcls_result_acls,
        )?;
        let mut out = Vec::with_capacity(bindings.len());
        for &b in bindings.iter().filter(|b| !b.is_null()) {
            // SAFETY: `b` is a live binding owned by `result`; its strings are copied here.
            let (restype, name, pattern, principal, host, operation, permission) = unsafe {
                (
                    rd::rd_kafka_AclBinding_restype(b),
                    rd::rd_kafka_AclBinding_name(b),
                    rd::rd_kafka_AclBinding_resource_pattern_type(b),
                    rd::rd_kafka_AclBinding_principal(b),
                    rd::rd_kafka_AclBinding_host(b),
                    rd::rd_kafka_AclBinding_operation(b),
                    rd::rd_kafka_AclBinding_permission_type(b),
                )
            };
            use rd::rd_kafka_AclOperation_t as Op;
            use rd::rd_kafka_ResourceType_t as Rt;
            out.push(Binding {
                principal: string(principal),
                host: string(host),
                resource_type: match restype {
                    Rt::RD_KAFKA_RESOURCE_TOPIC => Some(ResourceType::Topic),
                    Rt::RD_KAFKA_RESOURCE_GROUP => Some(ResourceType::Group),
                    Rt::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => Some(ResourceType::TransactionalId),
                    _ => None,
                },
                pattern_type: if pattern
                    == rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED
                {
                    PatternType::Prefixed
                } else {
                    PatternType::Literal
                },
                resource: string(name),
                operation: match operation {
                    Op::RD_KAFKA_ACL_OPERATION_ALL => None,
                    Op::RD_KAFKA_ACL_OPERATION_READ => Some(Operation::Read),
                    Op::RD_KAFKA_ACL_OPERATION_WRITE => Some(Operation::Write),
                    Op::RD_KAFKA_ACL_OPERATION_CREATE => Some(Operation::Create),
                    Op::RD_KAFKA_ACL_OPERATION_DESCRIBE => Some(Operation::Describe),
                    Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS => Some(Operation::DescribeConfigs),
                    // Operations verdict never needs: kept out of the comparison.
                    _ => continue,
                },
                allow: permission
                    == rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            });
        }
        Ok(out)
    }

    struct Filter(*mut rd::rd_kafka_AclBindingFilter_t);
    impl Drop for Filter {
        fn drop(&mut self) {
            // SAFETY: made by rd_kafka_AclBindingFilter_new (non-null, checked), destroyed once.
            unsafe { rd::rd_kafka_AclBinding_destroy(self.0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acls::PatternType;

    fn acl(rt: ResourceType, name: &str, op: Operation) -> Acl {
        Acl {
            principal: String::new(),
            resource_type: rt,
            pattern_type: PatternType::Literal,
            resource: name.into(),
            operation: op,
            why: "test",
        }
    }

    #[test]
    fn what_the_cluster_does_not_grant_is_missing_and_what_it_does_not_say_is_not() {
        use Operation::*;
        use ResourceType::*;
        let needed = vec![
            acl(Topic, "in", Read),
            acl(Topic, "out", Write),
            acl(Topic, "out", DescribeConfigs),
            acl(Topic, "audit", Write),
            acl(Topic, "quiet", Write),
            acl(Group, "g", Read),
            acl(TransactionalId, "g-", Write),
        ];
        let mut topics = BTreeMap::new();
        topics.insert(
            "in".to_string(),
            Granted::Operations([Granting::Op(Read)].into()),
        );
        topics.insert(
            "out".to_string(),
            Granted::Operations([Granting::Op(Write)].into()),
        );
        topics.insert("audit".to_string(), Granted::Nothing);
        let group = Granted::Operations([Granting::All].into());
        let missing: Vec<String> = missing(&needed, &topics, ("g", &group))
            .iter()
            .map(|a| format!("{:?} {}", a.operation, a.resource))
            .collect();
        assert_eq!(missing, vec!["DescribeConfigs out", "Write audit"]);
        // Only the service's own group is judged by what the cluster said of it.
        let readers = [acl(Group, "verdict-reader-", Read)];
        assert!(super::missing(&readers, &topics, ("g", &Granted::Nothing)).is_empty());
        assert_eq!(
            super::missing(&needed[5..6], &topics, ("g", &Granted::Nothing)).len(),
            1
        );
    }

    #[test]
    fn refusals_are_nothing_and_other_errors_say_nothing() {
        assert_eq!(
            granted(Some(RDKafkaErrorCode::TopicAuthorizationFailed), None),
            Granted::Nothing
        );
        assert_eq!(
            granted(Some(RDKafkaErrorCode::UnknownTopicOrPartition), None),
            Granted::Unknown
        );
        assert_eq!(granted(None, None), Granted::Unknown);
        assert!(granted(None, Some(vec![3, 8])).allows(Operation::Read));
        assert!(!granted(None, Some(vec![3, 8])).allows(Operation::Write));
    }
}
