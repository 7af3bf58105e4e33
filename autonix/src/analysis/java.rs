//! Java: Maven (modules, compiler release, toolchains plugin, mvnw) and
//! Gradle (Groovy or Kotlin DSL, with or without wrapper, `include`d
//! subprojects, JVM toolchains); `system.properties` via the version files.

use super::versions::Candidate as Version;
use super::{Candidate, Ctx, Language};
use crate::scan::{Warning, join};

/// Maven and Gradle are both reported when one tree has both (a migration
/// in progress, or CI building with each); `shapes::mark_preferred` then
/// says which one CI or the README uses.
pub(crate) fn detect(ctx: &mut Ctx<'_>, dir: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    if ctx.has(dir, "pom.xml") {
        out.push(maven(ctx, dir));
    }
    let manifest = [
        "build.gradle.kts",
        "build.gradle",
        "settings.gradle.kts",
        "settings.gradle",
    ]
    .into_iter()
    .find(|f| ctx.has(dir, f));
    if let Some(manifest) = manifest {
        let mut g = gradle(ctx, dir, manifest);
        if !out.is_empty() {
            // Two packages of one name would collide in the flake.
            g.project.name = format!("{}-gradle", g.project.name);
        }
        out.push(g);
    }
    out
}

fn maven(ctx: &mut Ctx<'_>, dir: &str) -> Candidate {
    let mut project = ctx.project(dir, Language::Java, "maven", "pom.xml");
    let raw = ctx.text(dir, "pom.xml").unwrap_or("").to_string();
    let xml = strip_comments(&raw);
    if !xml.contains("<project") {
        ctx.warn(&project.manifest, "no <project> element; not a Maven POM?");
    }
    let props = tag(&xml, "properties").unwrap_or("").to_string();
    let resolve = |v: &str| -> String {
        match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(name) => tag(&props, name).unwrap_or(v).trim().to_string(),
            None => v.trim().to_string(),
        }
    };
    // Top-level coordinates: drop nested blocks that carry their own.
    let top = strip_blocks(
        &xml,
        &[
            "parent",
            "dependencies",
            "dependencyManagement",
            "build",
            "profiles",
            "reporting",
            "properties",
        ],
    );
    if let Some(a) = tag(&top, "artifactId") {
        project.name = a.trim().to_string();
    }
    project.version = tag(&top, "version").map(resolve);
    let modules = tag(&top, "modules")
        .map(|m| tags(m, "module"))
        .unwrap_or_default();
    let mut members = Vec::new();
    for m in modules {
        let d = crate::glob::under(dir, m.trim());
        if ctx.has(&d, "pom.xml") {
            members.push(d);
        } else {
            ctx.warn(
                &project.manifest,
                format!("module {} has no pom.xml", m.trim()),
            );
        }
    }
    members.sort();
    project.members = members.clone();

    let src = project.manifest.clone();
    let mut versions = Vec::new();
    if let Some(v) = tag(&xml, "jdk").and_then(|j| tag(j, "version")) {
        versions.push(Version::pin(
            resolve(v),
            format!("{src} (toolchains jdk version)"),
        ));
    }
    if let Some(v) = tag(&props, "maven.compiler.release") {
        versions.push(Version::pin(
            resolve(v),
            format!("{src} (maven.compiler.release)"),
        ));
    } else if let Some(v) = tag(&xml, "release") {
        versions.push(Version::pin(
            resolve(v),
            format!("{src} (compiler release)"),
        ));
    }
    for p in [
        "java.version",
        "maven.compiler.source",
        "maven.compiler.target",
    ] {
        if let Some(v) = tag(&props, p) {
            versions.push(Version::constraint(resolve(v), format!("{src} ({p})")));
            break;
        }
    }
    let mvn = if ctx.has(dir, "mvnw") {
        "./mvnw"
    } else {
        "mvn"
    };
    project.build = Some(format!("{mvn} -B -DskipTests package"));
    if xml.contains("spring-boot") {
        project.framework = Some("spring-boot".into());
    }
    let packaging = tag(&top, "packaging").map(str::trim).unwrap_or("jar");
    if packaging == "jar" {
        let v = project.version.clone().unwrap_or_default();
        let jar = if v.is_empty() {
            project.name.clone()
        } else {
            format!("{}-{v}", project.name)
        };
        project.run = Some(format!("java -jar target/{jar}.jar"));
    }
    Candidate::new(project, members, versions)
}

fn gradle(ctx: &mut Ctx<'_>, dir: &str, manifest: &str) -> Candidate {
    let mut project = ctx.project(dir, Language::Java, "gradle", manifest);
    let settings = ["settings.gradle.kts", "settings.gradle"]
        .iter()
        .find_map(|f| ctx.text(dir, f).map(|t| (join(dir, f), t.to_string())));
    let build_file = ["build.gradle.kts", "build.gradle"]
        .iter()
        .find_map(|f| ctx.text(dir, f).map(|t| (join(dir, f), t.to_string())));
    let mut members = Vec::new();
    if let Some((_, s)) = &settings {
        for line in s.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("rootProject.name") {
                if let Some(n) = quoted(rest).into_iter().next() {
                    project.name = n;
                }
            } else if line.starts_with("include") && !line.starts_with("includeBuild") {
                for p in quoted(&line["include".len()..]) {
                    let d = crate::glob::under(dir, &p.trim_start_matches(':').replace(':', "/"));
                    if ["build.gradle", "build.gradle.kts"]
                        .iter()
                        .any(|f| ctx.has(&d, f))
                    {
                        members.push(d);
                    }
                }
            }
        }
    }
    members.sort();
    members.dedup();
    project.members = members.clone();
    let mut versions = Vec::new();
    if let Some((path, b)) = &build_file {
        if let Some(v) = after(b, "JavaLanguageVersion.of(") {
            versions.push(Version::pin(
                v,
                format!("{path} (toolchain languageVersion)"),
            ));
        }
        if let Some(v) = after(b, "JavaVersion.VERSION_").map(|v| v.replace('_', ".")) {
            versions.push(Version::constraint(
                v,
                format!("{path} (sourceCompatibility)"),
            ));
        } else if let Some(line) = b
            .lines()
            .find(|l| l.trim_start().starts_with("sourceCompatibility"))
            && let Some(v) = line.split('=').nth(1)
        {
            let v = v.trim().trim_matches(|c| c == '\'' || c == '"');
            if !v.is_empty() {
                versions.push(Version::constraint(
                    v,
                    format!("{path} (sourceCompatibility)"),
                ));
            }
        }
        if b.contains("org.springframework.boot") {
            project.framework = Some("spring-boot".into());
        }
        project.version = b
            .lines()
            .find(|l| l.trim_start().starts_with("version"))
            .and_then(|l| quoted(l).into_iter().next());
    }
    let wrapper = ctx.has(dir, "gradlew");
    let mut warnings = Vec::new();
    project.package_manager_version = None;
    let gradle_cmd = if wrapper { "./gradlew" } else { "gradle" };
    project.build = Some(format!("{gradle_cmd} build -x test"));
    let jar = match &project.version {
        Some(v) => format!("{}-{v}", project.name),
        None => project.name.clone(),
    };
    project.run = Some(format!("java -jar build/libs/{jar}.jar"));
    if !wrapper {
        warnings.push(Warning::new(
            &project.manifest,
            "no gradlew: the Gradle version is not pinned",
        ));
    }
    Candidate {
        warnings,
        ..Candidate::new(project, members, versions)
    }
}

/// The digits (and dots) right after `needle`.
fn after(text: &str, needle: &str) -> Option<String> {
    let i = text.find(needle)?;
    let v: String = text[i + needle.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '_' || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Every `'…'` or `"…"` string on a line.
pub(crate) fn quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if (c == '"' || c == '\'')
            && let Some(end) = s[i + 1..].find(c)
        {
            out.push(s[i + 1..i + 1 + end].to_string());
            // Skip past the closing quote.
            for _ in 0..=end {
                chars.next();
            }
        }
    }
    out
}

pub(crate) fn strip_comments(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find("-->") {
            Some(j) => &rest[i + j + 3..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Content of the first `<name>…</name>` element.
pub(crate) fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}

pub(crate) fn tags<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(v) = tag(rest, name) {
        out.push(v);
        let consumed = v.as_ptr() as usize - rest.as_ptr() as usize + v.len();
        rest = &rest[consumed..];
    }
    out
}

/// Removes every `<name>…</name>` block for the given names.
fn strip_blocks(xml: &str, names: &[&str]) -> String {
    let mut s = xml.to_string();
    for name in names {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        while let Some(i) = s.find(&open) {
            match s[i..].find(&close) {
                Some(j) => s.replace_range(i..i + j + close.len(), ""),
                None => break,
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_and_gradle_helpers() {
        let x = "<project><!-- <artifactId>no</artifactId> --><parent><artifactId>p</artifactId></parent><artifactId>app</artifactId><modules><module>a</module><module>b</module></modules></project>";
        let c = strip_comments(x);
        let top = strip_blocks(&c, &["parent"]);
        assert_eq!(tag(&top, "artifactId"), Some("app"));
        assert_eq!(
            tags(tag(&top, "modules").unwrap(), "module"),
            vec!["a", "b"]
        );
        assert_eq!(quoted("include ':api', \"web\""), vec![":api", "web"]);
        assert_eq!(
            after(
                "languageVersion = JavaLanguageVersion.of(21)",
                "JavaLanguageVersion.of("
            ),
            Some("21".into())
        );
    }
}
