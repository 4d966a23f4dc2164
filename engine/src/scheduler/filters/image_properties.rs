//! `ImageProperties`: an image's `hw_architecture`, `img_hv_type` and
//! `img_hv_requested_version` must match what the host reports. A host that reports
//! nothing for a property the image asks about does not match (as in Nova).

use super::{Filter, Reason, Rejections, retain};
use crate::scheduler::context::RequestContext;
use crate::scheduler::extra_specs_ops::version_matches;
use crate::state::shard::Shard;

/// See the module doc.
pub struct ImageProperties;

impl Filter for ImageProperties {
    fn name(&self) -> &'static str {
        "ImageProperties"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        ctx.arch.is_some() || ctx.hv_type.is_some() || ctx.hv_version.is_some()
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        retain(alive, s.slots(), Reason::Filter(self.name()), rej, |i| {
            ctx.arch.is_none_or(|a| s.arch[i] == a)
                && ctx.hv_type.is_none_or(|t| s.hv_type[i] == t)
                && ctx.hv_version.as_ref().is_none_or(|(op, v)| {
                    s.hv_version[i] != 0 && version_matches(s.hv_version[i], op, *v)
                })
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::model::ProviderSpec;
    use crate::scheduler::filters::testkit::*;

    fn hv(name: &str, arch: &str, hv_type: &str, version: &str) -> ProviderSpec {
        ProviderSpec {
            arch: Some(arch.into()),
            hypervisor_type: Some(hv_type.into()),
            hypervisor_version: Some(version.into()),
            ..host(name)
        }
    }

    #[test]
    fn arch_type_and_version() {
        let mut cloud = TestCloud::new();
        cloud.host(hv("arm-kvm-7", "aarch64", "kvm", "7.0"));
        cloud.host(hv("x86-kvm-8", "x86_64", "kvm", "8.0.0"));
        cloud.host(hv("x86-qemu-6", "x86_64", "qemu", "6.2"));
        cloud.host(host("bare")); // reports nothing
        const ALL: &[&str] = &["arm-kvm-7", "bare", "x86-kvm-8", "x86-qemu-6"];
        let cases: &[(Pairs, &[&str])] = &[
            (&[], ALL),
            (&[("os_distro", "ubuntu")], ALL),
            (
                &[("hw_architecture", "x86_64")],
                &["x86-kvm-8", "x86-qemu-6"],
            ),
            (&[("hw_architecture", "aarch64")], &["arm-kvm-7"]),
            (&[("hw_architecture", "ppc64le")], &[]),
            (&[("img_hv_type", "kvm")], &["arm-kvm-7", "x86-kvm-8"]),
            (&[("img_hv_type", "xen")], &[]),
            (
                &[("hw_architecture", "x86_64"), ("img_hv_type", "kvm")],
                &["x86-kvm-8"],
            ),
            (
                &[("hw_architecture", "aarch64"), ("img_hv_type", "qemu")],
                &[],
            ),
            (
                &[("img_hv_requested_version", ">=7.0")],
                &["arm-kvm-7", "x86-kvm-8"],
            ),
            (
                &[("img_hv_requested_version", "6.2")],
                &["arm-kvm-7", "x86-kvm-8", "x86-qemu-6"],
            ),
            (&[("img_hv_requested_version", "<7")], &["x86-qemu-6"]),
            (&[("img_hv_requested_version", "==7.0.0")], &["arm-kvm-7"]),
            (
                &[("img_hv_requested_version", "!=7")],
                &["x86-kvm-8", "x86-qemu-6"],
            ),
            (&[("img_hv_requested_version", ">8")], &[]),
            (
                &[
                    ("hw_architecture", "x86_64"),
                    ("img_hv_requested_version", ">=6.2.0"),
                    ("img_hv_type", "qemu"),
                ],
                &["x86-qemu-6"],
            ),
        ];
        for (i, (props, want)) in cases.iter().enumerate() {
            cloud.image(&format!("img{i}"), props);
            let mut s = spec();
            s.image = Some(format!("img{i}"));
            let out = cloud.run_filters(&s);
            assert_eq!(out.passed, *want, "{props:?}");
            let dropped = 4 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(
                    out.rejections,
                    vec![("ImageProperties".to_string(), dropped)],
                    "{props:?}"
                );
            }
        }
    }

    #[test]
    fn image_by_id_and_unknown_image() {
        let mut cloud = TestCloud::new();
        cloud.host(hv("x86", "x86_64", "kvm", "8.0"));
        cloud.host(hv("arm", "aarch64", "kvm", "8.0"));
        let id = cloud.image("arm-image", &[("hw_architecture", "aarch64")]);
        let mut s = spec();
        s.image = Some(id.to_string());
        assert_eq!(cloud.run_filters(&s).passed, vec!["arm"]);
        s.image = Some("no-such-image".into());
        assert!(matches!(
            cloud.try_filters(&s),
            Err(crate::EngineError::NotFound { kind: "image", .. })
        ));
    }
}
