//! `IsolatedHosts`: images in `isolated_images` run only on `isolated_hosts`; with
//! `restrict_isolated_hosts_to_isolated_images` (default on) isolated hosts run nothing
//! else. Inactive when neither list is configured.

use super::{Filter, Reason, Rejections, retain_by};
use crate::scheduler::context::RequestContext;
use crate::state::shard::{ISOLATED, Shard};

/// See the module doc.
pub struct IsolatedHosts {
    /// Whether any host or image is isolated.
    pub enabled: bool,
    /// `restrict_isolated_hosts_to_isolated_images`.
    pub restrict: bool,
}

impl Filter for IsolatedHosts {
    fn name(&self) -> &'static str {
        "IsolatedHosts"
    }
    fn active(&self, ctx: &RequestContext) -> bool {
        self.enabled && (ctx.isolated_image || self.restrict)
    }
    fn filter(
        &self,
        ctx: &RequestContext,
        s: &Shard,
        _: u32,
        alive: &mut [u64],
        rej: &mut Rejections,
    ) {
        let flags = &s.flags[..s.slots()];
        let want_isolated = ctx.isolated_image;
        retain_by(alive, flags, Reason::Filter(self.name()), rej, |f| {
            (f & ISOLATED != 0) == want_isolated
        });
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::scheduler::filters::testkit::*;

    const ISO2: Uuid = Uuid::from_u128(0x1501_a7ed);

    /// Hosts `iso` (isolated by name), `iso2` (by uuid), `plain`; images `secure` (isolated
    /// by name), `secure2` (by id), `ubuntu`.
    fn cloud(isolate: bool, restrict: bool) -> TestCloud {
        let secure2 = Uuid::from_u128(0x5ec2);
        let mut cloud = TestCloud::with_scheduler(|s| {
            if isolate {
                s.isolated_hosts = vec!["iso".into(), ISO2.to_string()];
                s.isolated_images = vec!["secure".into(), secure2.to_string()];
            }
            s.restrict_isolated_hosts_to_isolated_images = restrict;
        });
        cloud.host(host("iso"));
        cloud.host(host("iso2").uuid(ISO2));
        cloud.host(host("plain"));
        cloud.image("secure", &[]);
        cloud
            .engine
            .create_image(crate::model::ImageSpec {
                id: Some(secure2),
                name: "secure2".into(),
                properties: Default::default(),
            })
            .unwrap();
        cloud.image("ubuntu", &[]);
        cloud
    }

    #[test]
    fn isolated_images_on_isolated_hosts() {
        const ALL: &[&str] = &["iso", "iso2", "plain"];
        const ISO: &[&str] = &["iso", "iso2"];
        const PLAIN: &[&str] = &["plain"];
        // (isolation configured, restrict, image, passes)
        let cases: &[(bool, bool, Option<&str>, &[&str])] = &[
            (true, true, Some("secure"), ISO),
            (true, true, Some("secure2"), ISO),
            (true, true, Some("ubuntu"), PLAIN),
            (true, true, None, PLAIN),
            (true, false, Some("secure"), ISO),
            (true, false, Some("secure2"), ISO),
            (true, false, Some("ubuntu"), ALL),
            (true, false, None, ALL),
            (false, true, Some("secure"), ALL),
            (false, true, None, ALL),
        ];
        for &(isolate, restrict, image, want) in cases {
            let cloud = cloud(isolate, restrict);
            let mut s = spec();
            s.image = image.map(str::to_string);
            let out = cloud.run_filters(&s);
            assert_eq!(
                out.passed, want,
                "isolate {isolate} restrict {restrict} image {image:?}"
            );
            let dropped = 3 - want.len() as u32;
            if dropped > 0 {
                assert_eq!(out.rejections, vec![("IsolatedHosts".to_string(), dropped)]);
            }
        }
    }
}
