//! Refusals: the code a client maps to an `io::ErrorKind`, what to tell the person (naming the
//! service, the partitions and the rule), and a short reason for the counters. The router says
//! *that* something is refused; this module says it in words.

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_proto::ErrorCode;

use super::World;
use crate::router::{self, BindRefusal, Policy, PolicyRule, Refusal};

/// A refused request: the code the client maps to an `io::ErrorKind`, what to tell the
/// person, and a short reason for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The wire code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
    /// A stable short reason (a metrics label).
    pub reason: &'static str,
}

impl Refused {
    /// A refusal.
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
            reason,
        }
    }

    /// The listener a connect was offered to closed (or its session failed) before it took
    /// the connection: `why` says which.
    pub fn listener_closed(why: impl Into<String>) -> Refused {
        Refused::new(ErrorCode::Refused, "listener_closed", why)
    }
}

/// A bind the router refuses whatever the registry says.
pub(super) fn bind(refusal: BindRefusal) -> Refused {
    match refusal {
        BindRefusal::Broadcast => Refused::new(
            ErrorCode::AddrNotAvailable,
            "broadcast",
            "BROADCAST cannot be bound: bind wildcard, children, loopback, parent or a partition's id",
        ),
        BindRefusal::ParentInRoot => Refused::new(
            ErrorCode::Unsupported,
            "parent_in_root",
            "binding PARENT is not supported in the root partition, which has no parent",
        ),
        BindRefusal::Silohost => Refused::new(
            ErrorCode::Unsupported,
            "silohost",
            "binding SILOHOST is not supported: hvsock has no silos; a sandbox reaches its host through PARENT",
        ),
    }
}

impl World {
    /// A policy rule for people, partitions by name: `policy connect: [a, b]`.
    fn rule_text(&self, policy: &Policy, rule: PolicyRule) -> String {
        policy.rule_text(rule, |id| self.partition_label(id))
    }

    /// A bind in `partition` that the policy of the registered `service` refuses by `rule`.
    pub(super) fn bind_policy_refusal(
        &self,
        partition: VmId,
        service: ServiceId,
        rule: PolicyRule,
    ) -> Refused {
        let name = self
            .service(service)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let rule_text = self.rule_text(self.effective_policy(service), rule);
        let (reason, message) = match rule {
            PolicyRule::WildcardBind => (
                "policy_wildcard_bind",
                format!(
                    "service {name} does not allow wildcard binds ({rule_text}): bind children, parent, loopback or a partition's id"
                ),
            ),
            _ => (
                "policy_bind",
                format!(
                    "service {name} does not allow partition {} to bind it ({rule_text})",
                    self.partition_label(partition)
                ),
            ),
        };
        Refused::new(ErrorCode::Denied, reason, message)
    }

    /// The answer to a connect the router refused, with the names a person reads.
    pub(super) fn refusal(&self, from: VmId, target: SockAddrHv, refusal: Refusal) -> Refused {
        let service = target.service_id;
        let vm = target.vm_id;
        match refusal {
            Refusal::Unreachable => {
                let message = if from == self.root() && (vm == VmId::PARENT || vm == VmId::ZERO) {
                    format!(
                        "{} reaches the parent partition, and the root partition has none",
                        vm.keyword().unwrap_or("PARENT").to_uppercase()
                    )
                } else if let Some(word) = vm.keyword() {
                    format!(
                        "{} is not a partition one can connect to (use loopback, parent, zero or a child's id)",
                        word.to_uppercase()
                    )
                } else {
                    format!(
                        "no partition {vm} is reachable from {}: only itself, its parent and its children are",
                        self.partition_label(from)
                    )
                };
                Refused::new(ErrorCode::Unreachable, "unreachable", message)
            }
            Refusal::NotRegistered => Refused::new(
                ErrorCode::Denied,
                "not_registered",
                format!(
                    "service {service} is not registered, and connections across partitions need a registered, enabled service: register it with `hvsock service add NAME --id {service}`"
                ),
            ),
            Refusal::Disabled => {
                let name = self
                    .service(service)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                Refused::new(
                    ErrorCode::Denied,
                    "disabled",
                    format!(
                        "service {name} ({service}) is disabled: enable it with `hvsock service enable {name}`"
                    ),
                )
            }
            Refusal::Policy(rule) => {
                let policy = self.effective_policy(service);
                let name = self
                    .service(service)
                    .map(|s| s.name.clone())
                    .unwrap_or_else(|| service.to_string());
                let rule_text = self.rule_text(policy, rule);
                let (reason, message) = match rule {
                    PolicyRule::Connect => (
                        "policy_connect",
                        format!(
                            "service {name} does not allow partition {} to connect ({rule_text})",
                            self.partition_label(from)
                        ),
                    ),
                    PolicyRule::Bind | PolicyRule::WildcardBind => {
                        let dest = router::destination(self.topology(), from, vm).unwrap_or(from);
                        let what = if rule == PolicyRule::Bind {
                            format!("partition {} may not serve it", self.partition_label(dest))
                        } else {
                            "its wildcard listeners may not serve it".to_owned()
                        };
                        let reason = if rule == PolicyRule::Bind {
                            "policy_bind"
                        } else {
                            "policy_wildcard_bind"
                        };
                        (
                            reason,
                            format!(
                                "service {name}: the listener that would take this connection from {} is not allowed by the policy: {what} ({rule_text})",
                                self.partition_label(from)
                            ),
                        )
                    }
                };
                Refused::new(ErrorCode::Denied, reason, message)
            }
            Refusal::NothingListens => {
                let dest = router::destination(self.topology(), from, vm).unwrap_or(from);
                Refused::new(
                    ErrorCode::Refused,
                    "nothing_listens",
                    format!(
                        "nothing in partition {} listens on service {} for connections from {}",
                        self.partition_label(dest),
                        self.service_label(service),
                        self.partition_label(from)
                    ),
                )
            }
        }
    }
}
