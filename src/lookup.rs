//! How a path is found in an image's merged layers: the OCI image-spec rules
//! (upper layers win; `.wh.NAME` hides NAME in lower layers, `.wh..wh..opq`
//! hides a directory's lower contents; a whiteout never hides its own
//! layer's entries) and symlinks followed inside the image root, never above
//! it, with loops detected. It works over any per-layer index ([`Layer`]),
//! so the rules are tested apart from the index's on-disk format.
//!
//! Paths inside a layer are relative, cleaned and joined with `/`, the root
//! being `""`, as a layer tar names its entries.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

/// The prefix of a whiteout's name.
const WHITEOUT: &str = ".wh.";
/// The name of an opaque directory's marker.
const OPAQUE: &str = ".wh..wh..opq";
/// The most symlinks one lookup follows, as Linux does.
pub(crate) const MAX_LINKS: usize = 40;

/// What the lookup needs of one layer's index.
pub(crate) trait Layer {
    type Entry: Clone;
    /// The layer's own entry at `path`, whiteout markers included. Every
    /// directory that holds entries has one (an index makes up those a tar
    /// leaves out, as extracting it would), so a lookup never has to infer
    /// a directory from its content.
    fn get(&self, path: &str) -> Option<Self::Entry>;
    /// The names of the layer's entries directly under directory `dir`, in
    /// any order, whiteout markers included.
    fn names(&self, dir: &str) -> Vec<String>;
    /// What `entry` is, as far as a lookup cares.
    fn kind(&self, entry: &Self::Entry) -> Kind;
    /// Whether the layer may hold a whiteout or opaque marker directly in
    /// directory `dir`: when it cannot, a lookup skips searching for them.
    fn may_hide_in(&self, _dir: &str) -> bool {
        true
    }
    /// Whether `entry` is a directory the index made up for the entries
    /// below it. Extraction leaves a lower layer's directory as it is
    /// there, so a found directory reports the topmost entry a tar has.
    fn is_implicit(&self, _entry: &Self::Entry) -> bool {
        false
    }
}

/// The kinds of entry a lookup tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Directory,
    /// A symbolic link, with its target as stored.
    Symlink(String),
    /// Anything else: a file, a hardlink, a device, a FIFO.
    Other,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Missed {
    /// No such entry, a whited-out one, a path running through a
    /// non-directory, or a dangling link.
    NotFound,
    /// More than [`MAX_LINKS`] symlinks, a loop among them.
    TooManyLinks,
}

/// A path found in the merged layers.
#[derive(Debug, Clone)]
pub(crate) struct Found<E> {
    /// Its path with every followed symlink resolved (`""` is the root).
    pub path: String,
    /// The topmost layer with an entry there, and that entry (a directory:
    /// the topmost one a tar has, if any); none for a root that no layer
    /// has an entry of its own for.
    pub entry: Option<(usize, E)>,
}

/// Where a walk ends: in a directory, with the directories on the way (the
/// root first), or at anything else, the last component.
enum Walked<E> {
    Directory(Vec<Dir>),
    Other {
        path: String,
        layer: usize,
        entry: E,
    },
}

/// A directory as merged: the layers from `floor` up show in it, those below
/// are hidden by a whiteout, an opaque marker or a non-directory above them.
#[derive(Debug, Clone)]
struct Dir {
    path: String,
    floor: usize,
}

/// The layers of one image, bottom first.
pub(crate) struct Merged<'a, L> {
    layers: &'a [L],
    walks: Option<&'a Walks>,
}

/// The directories lookups walked to, by the cleaned path they were asked
/// under: the layers never change, so neither does a walk, and a lookup
/// that finds its parent here starts from it. Paths that run through
/// symlinks make many names for one directory, so only the first
/// [`WALKS_KEPT`] are kept.
#[derive(Default)]
pub(crate) struct Walks(RwLock<HashMap<String, Walk>>);

/// How many walks [`Walks`] keeps.
const WALKS_KEPT: usize = 4096;

/// A directory walked to: the directories on the way (the root first), and
/// the symlinks followed to get there.
#[derive(Clone)]
struct Walk {
    walked: Vec<Dir>,
    links: usize,
}

impl<'a, L: Layer> Merged<'a, L> {
    pub(crate) fn new(layers: &'a [L]) -> Merged<'a, L> {
        Merged {
            layers,
            walks: None,
        }
    }

    /// The same, keeping the directories it walks to in `walks` (which
    /// must only ever be used with these layers).
    pub(crate) fn with_walks(layers: &'a [L], walks: &'a Walks) -> Merged<'a, L> {
        Merged {
            layers,
            walks: Some(walks),
        }
    }

    /// Finds `path` (absolute or taken from the root; `.` and `..` are
    /// lexical in it), following symlinks in every component but the last,
    /// and in the last too if `follow_last`.
    pub(crate) fn lookup(&self, path: &str, follow_last: bool) -> Result<Found<L::Entry>, Missed> {
        Ok(match self.walk(path, follow_last)? {
            Walked::Directory(walked) => Found {
                path: walked.last().expect("the root stays").path.clone(),
                entry: self.entry_of(&walked),
            },
            Walked::Other { path, layer, entry } => Found {
                path,
                entry: Some((layer, entry)),
            },
        })
    }

    /// Walks to `path` as [`lookup`](Self::lookup) finds it.
    fn walk(&self, path: &str, follow_last: bool) -> Result<Walked<L::Entry>, Missed> {
        let mut todo: VecDeque<String> = clean(path).into_iter().collect();
        // The parent's walk, when one is kept; else the parent's key, to
        // keep the walk once it is made.
        let parent = (todo.len() > 1).then(|| {
            let parts: Vec<&str> = todo.range(..todo.len() - 1).map(String::as_str).collect();
            parts.join("/")
        });
        let kept = parent.as_ref().zip(self.walks).and_then(|(key, walks)| {
            let walks = walks.0.read().unwrap_or_else(|e| e.into_inner());
            walks.get(key).cloned()
        });
        let (mut walked, mut links, mut to_keep) = match kept {
            Some(walk) => {
                todo.drain(..todo.len() - 1);
                (walk.walked, walk.links, None)
            }
            None => (
                vec![self.root()],
                0,
                parent.filter(|_| self.walks.is_some()),
            ),
        };
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                // Only from a link's target: the directory walked to, not a
                // lexical parent, and never above the root.
                if walked.len() > 1 {
                    walked.pop();
                }
            } else {
                let dir = walked.last().expect("the root stays");
                let (layer, entry) = self.child(dir, &name).ok_or(Missed::NotFound)?;
                let is_last = todo.is_empty();
                match self.layers[layer].kind(&entry) {
                    Kind::Symlink(target) if !is_last || follow_last => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(Missed::TooManyLinks);
                        }
                        // Linux makes no such link, and extraction fails on
                        // it: it names nothing, not its own directory.
                        if target.is_empty() {
                            return Err(Missed::NotFound);
                        }
                        if target.starts_with('/') {
                            walked.truncate(1);
                        }
                        for part in target_parts(&target).into_iter().rev() {
                            todo.push_front(part);
                        }
                    }
                    Kind::Directory => {
                        let child = self.descend(dir, &name, layer);
                        walked.push(child);
                    }
                    _ if is_last => {
                        return Ok(Walked::Other {
                            path: join(&dir.path, &name),
                            layer,
                            entry,
                        })
                    }
                    // A path that runs through a file.
                    _ => return Err(Missed::NotFound),
                }
            }
            // Links push their targets in front of the caller's last
            // component, so when it is all that is left, the parent is
            // walked to.
            if todo.len() == 1 {
                if let Some((key, walks)) = to_keep.take().zip(self.walks) {
                    let mut walks = walks.0.write().unwrap_or_else(|e| e.into_inner());
                    if walks.len() < WALKS_KEPT {
                        let walked = walked.clone();
                        walks.insert(key, Walk { walked, links });
                    }
                }
            }
        }
        Ok(Walked::Directory(walked))
    }

    /// The merged names in directory `path` (followed like any lookup),
    /// sorted bytewise, without whiteout markers or what they hide; `None`
    /// when `path` is not a directory.
    pub(crate) fn names(&self, path: &str) -> Result<Option<Vec<String>>, Missed> {
        let Walked::Directory(mut walked) = self.walk(path, true)? else {
            return Ok(None);
        };
        let dir = walked.pop().expect("the root stays");
        let mut names: Vec<String> = self.layers[dir.floor..]
            .iter()
            .flat_map(|layer| layer.names(&dir.path))
            .filter(|name| !name.starts_with(WHITEOUT))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.retain(|name| self.child(&dir, name).is_some());
        Ok(Some(names))
    }

    /// The root: the layers below the topmost one that makes it opaque are
    /// hidden.
    fn root(&self) -> Dir {
        let floor = (0..self.layers.len())
            .rev()
            .find(|&layer| self.marked(layer, "", OPAQUE))
            .unwrap_or(0);
        Dir {
            path: String::new(),
            floor,
        }
    }

    /// The topmost entry a layer's tar has for the root.
    fn root_entry(&self) -> Option<(usize, L::Entry)> {
        (0..self.layers.len()).rev().find_map(|layer| {
            let entry = self.layers[layer].get("")?;
            (!self.layers[layer].is_implicit(&entry)).then_some((layer, entry))
        })
    }

    /// The entry of the last directory walked to.
    fn entry_of(&self, walked: &[Dir]) -> Option<(usize, L::Entry)> {
        match walked {
            [_root] => self.root_entry(),
            [.., parent, dir] => {
                let name = dir.path.rsplit('/').next().unwrap_or(&dir.path);
                let (layer, entry) = self.child(parent, name)?;
                Some(self.explicit(parent, name, layer, entry))
            }
            [] => None,
        }
    }

    /// The topmost entry for `name` in `dir` from the layers that show in
    /// it, unless a whiteout above hides it.
    fn child(&self, dir: &Dir, name: &str) -> Option<(usize, L::Entry)> {
        if name.starts_with(WHITEOUT) {
            return None;
        }
        let path = join(&dir.path, name);
        for layer in (dir.floor..self.layers.len()).rev() {
            // The layer's own entry first: a whiteout hides lower layers only.
            if let Some(entry) = self.layers[layer].get(&path) {
                return Some((layer, entry));
            }
            if self.whited_out(layer, &dir.path, name) {
                return None;
            }
        }
        None
    }

    /// The entry directory `name` of `dir` reports, its topmost one being
    /// `entry` in layer `top`: an implicit one stands for the topmost
    /// directory a tar has below it, unless something hides that one
    /// first (a whiteout, a non-directory).
    fn explicit(&self, dir: &Dir, name: &str, top: usize, entry: L::Entry) -> (usize, L::Entry) {
        if !self.layers[top].is_implicit(&entry) || self.whited_out(top, &dir.path, name) {
            return (top, entry);
        }
        let path = join(&dir.path, name);
        for layer in (dir.floor..top).rev() {
            let index = &self.layers[layer];
            match index.get(&path) {
                Some(lower) if index.kind(&lower) != Kind::Directory => break,
                Some(lower) if !index.is_implicit(&lower) => return (layer, lower),
                _ => {}
            }
            if self.whited_out(layer, &dir.path, name) {
                break;
            }
        }
        (top, entry)
    }

    /// Directory `name` of `dir`, whose topmost entry is in `top`: the
    /// layers from `top` down show in it until one hides what is below it.
    fn descend(&self, dir: &Dir, name: &str, top: usize) -> Dir {
        let path = join(&dir.path, name);
        let mut floor = dir.floor;
        for layer in (dir.floor..=top).rev() {
            let index = &self.layers[layer];
            // An opaque marker or a whiteout hides the layers below this one.
            if self.marked(layer, &path, OPAQUE) || self.whited_out(layer, &dir.path, name) {
                floor = layer;
                break;
            }
            // So does a non-directory under the name: it hides this layer too.
            let replaced = index
                .get(&path)
                .is_some_and(|entry| index.kind(&entry) != Kind::Directory);
            if layer < top && replaced {
                floor = layer + 1;
                break;
            }
        }
        Dir { path, floor }
    }

    /// Whether `layer` has a whiteout for `name` in directory `dir`.
    fn whited_out(&self, layer: usize, dir: &str, name: &str) -> bool {
        self.marked(layer, dir, &format!("{WHITEOUT}{name}"))
    }

    /// Whether `layer` has marker `marker` (a whiteout or the opaque one)
    /// in directory `dir`.
    fn marked(&self, layer: usize, dir: &str, marker: &str) -> bool {
        let index = &self.layers[layer];
        index.may_hide_in(dir) && index.get(&join(dir, marker)).is_some()
    }
}

/// The components of a caller's path, with `.` and `..` resolved lexically
/// and never above the root.
fn clean(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part.to_owned()),
        }
    }
    parts
}

/// The components of a symlink's target, `..` kept: it is taken from the
/// directory the lookup has walked to.
fn target_parts(target: &str) -> Vec<String> {
    target
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_owned)
        .collect()
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A layer in memory: path to (kind, a label saying which entry it is).
    #[derive(Default)]
    struct Mem(BTreeMap<String, (Kind, &'static str)>);

    impl Mem {
        fn with(mut self, path: &str, kind: Kind, label: &'static str) -> Mem {
            self.0.insert(path.to_owned(), (kind, label));
            self
        }
        fn dir(self, path: &str) -> Mem {
            self.with(path, Kind::Directory, "dir")
        }
        fn file(self, path: &str, label: &'static str) -> Mem {
            self.with(path, Kind::Other, label)
        }
        fn link(self, path: &str, target: &str) -> Mem {
            self.with(path, Kind::Symlink(target.to_owned()), "link")
        }
    }

    impl Layer for Mem {
        type Entry = (Kind, &'static str);
        fn get(&self, path: &str) -> Option<Self::Entry> {
            self.0.get(path).cloned()
        }
        fn names(&self, dir: &str) -> Vec<String> {
            self.0
                .keys()
                .filter_map(|path| match dir {
                    "" => Some(path.as_str()),
                    dir => path.strip_prefix(dir)?.strip_prefix('/'),
                })
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(str::to_owned)
                .collect()
        }
        fn kind(&self, entry: &Self::Entry) -> Kind {
            entry.0.clone()
        }
        fn is_implicit(&self, entry: &Self::Entry) -> bool {
            entry.1 == "implicit"
        }
    }

    /// The label and layer of what `path` finds, following the last link;
    /// the same with no walks kept, with the parent's walk kept, and from
    /// it.
    fn find(layers: &[Mem], path: &str) -> Result<(&'static str, usize, String), Missed> {
        let labels = |merged: Merged<'_, Mem>| {
            let found = merged.lookup(path, true)?;
            let (layer, entry) = found.entry.expect("an entry");
            Ok((entry.1, layer, found.path))
        };
        let walks = Walks::default();
        let found = labels(Merged::new(layers));
        assert_eq!(
            labels(Merged::with_walks(layers, &walks)),
            found,
            "keeping walks"
        );
        assert_eq!(
            labels(Merged::with_walks(layers, &walks)),
            found,
            "from a kept walk"
        );
        found
    }

    fn names(layers: &[Mem], path: &str) -> Vec<String> {
        let walks = Walks::default();
        let names = Merged::new(layers).names(path).unwrap();
        for _ in 0..2 {
            assert_eq!(
                Merged::with_walks(layers, &walks).names(path).unwrap(),
                names
            );
        }
        names.expect("a directory")
    }

    #[test]
    fn upper_layers_win_and_a_directory_and_a_file_can_replace_each_other() {
        let layers = [
            Mem::default()
                .dir("etc")
                .file("etc/os", "old")
                .file("a", "file a")
                .dir("b")
                .file("b/x", "b/x"),
            Mem::default()
                .file("etc/os", "new")
                .dir("a")
                .file("a/inner", "inner")
                .file("b", "file b"),
        ];
        assert_eq!(
            find(&layers, "/etc/os").unwrap(),
            ("new", 1, "etc/os".into())
        );
        assert_eq!(find(&layers, "a/inner").unwrap().0, "inner");
        assert_eq!(find(&layers, "/b").unwrap(), ("file b", 1, "b".into()));
        // The lower directory's content is gone with it, and a path through
        // a file is not found.
        assert_eq!(find(&layers, "/b/x"), Err(Missed::NotFound));
        assert_eq!(names(&layers, "/"), ["a", "b", "etc"]);
        assert_eq!(names(&layers, "/a"), ["inner"]);
        assert_eq!(names(&layers, "/etc"), ["os"]);
    }

    #[test]
    fn a_file_in_a_middle_layer_hides_the_directory_below_it() {
        let layers = [
            Mem::default().dir("d").file("d/low", "low"),
            Mem::default().file("d", "file"),
            Mem::default().dir("d").file("d/high", "high"),
        ];
        assert_eq!(names(&layers, "/d"), ["high"]);
        assert_eq!(find(&layers, "/d/low"), Err(Missed::NotFound));
    }

    /// Two layers: the lower one's entries, the upper one's whiteouts.
    fn whited_out() -> [Mem; 2] {
        [
            Mem::default()
                .file("gone", "gone")
                .dir("tree")
                .file("tree/leaf", "leaf")
                .file("kept", "kept"),
            Mem::default()
                .file(".wh.gone", "marker")
                .file(".wh.tree", "marker")
                // The same layer's entry beside its own whiteout stays.
                .file(".wh.kept", "marker")
                .file("kept", "kept again"),
        ]
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let layers = whited_out();
        assert_eq!(find(&layers, "/gone"), Err(Missed::NotFound));
        assert_eq!(find(&layers, "/tree/leaf"), Err(Missed::NotFound));
        assert_eq!(find(&layers, "/kept").unwrap().0, "kept again");
        assert_eq!(find(&layers, "/.wh.gone"), Err(Missed::NotFound));
        assert_eq!(names(&layers, "/"), ["kept"]);
        // A directory made again above its whiteout starts empty.
        let [low, mid] = whited_out();
        let layers = [low, mid, Mem::default().dir("tree").file("tree/new", "new")];
        assert_eq!(names(&layers, "/tree"), ["new"]);
    }

    #[test]
    fn an_opaque_directory_hides_its_lower_content_but_not_its_own_layer() {
        let layers = [
            Mem::default()
                .dir("d")
                .file("d/low", "low")
                .dir("d/sub")
                .file("d/sub/x", "x"),
            Mem::default()
                .dir("d")
                .file("d/.wh..wh..opq", "marker")
                .file("d/mid", "mid"),
            Mem::default().file("d/high", "high"),
        ];
        assert_eq!(names(&layers, "/d"), ["high", "mid"]);
        assert_eq!(find(&layers, "/d/sub/x"), Err(Missed::NotFound));
        // An opaque root hides every layer below it.
        let layers = [
            Mem::default().file("low", "low"),
            Mem::default()
                .file(".wh..wh..opq", "marker")
                .file("mid", "mid"),
        ];
        assert_eq!(names(&layers, ""), ["mid"]);
    }

    #[test]
    fn symlinks_are_followed_inside_the_root_only() {
        let layers = [Mem::default()
            .dir("etc")
            .file("etc/passwd", "image passwd")
            .dir("usr")
            .dir("usr/lib")
            .file("usr/lib/os-release", "os-release")
            .link("lib", "usr/lib")
            .link("etc/os-release", "../usr/lib/os-release")
            .link("abs", "/etc/passwd")
            .link("escape", "../../../../etc/passwd")
            .link("dangling", "nowhere")
            .link("empty", "")
            .link("up", "usr/lib/../..")];
        assert_eq!(
            find(&layers, "/lib/os-release").unwrap(),
            ("os-release", 0, "usr/lib/os-release".into())
        );
        assert_eq!(find(&layers, "/etc/os-release").unwrap().0, "os-release");
        assert_eq!(find(&layers, "/abs").unwrap().2, "etc/passwd");
        // `..` never rises above the image's root, so the host's file is
        // never what an escaping link names.
        assert_eq!(find(&layers, "/escape").unwrap().2, "etc/passwd");
        assert_eq!(find(&layers, "/dangling"), Err(Missed::NotFound));
        // An empty target is dangling, not the link's own directory.
        assert_eq!(find(&layers, "/empty"), Err(Missed::NotFound));
        assert_eq!(find(&layers, "/empty/etc"), Err(Missed::NotFound));
        // `..` in a target is taken from where the walk is: usr/lib/../..
        // is the root.
        assert_eq!(Merged::new(&layers).lookup("/up", true).unwrap().path, "");
        assert_eq!(
            names(&layers, "/up"),
            ["abs", "dangling", "empty", "escape", "etc", "lib", "up", "usr"]
        );
        // The last component is not followed when asked not to.
        let link = Merged::new(&layers).lookup("/lib", false).unwrap();
        assert_eq!(link.entry.unwrap().1 .1, "link");
        assert_eq!(link.path, "lib");
        // In the caller's path, `..` is lexical: /lib/.. is the root, not /usr.
        assert_eq!(names(&layers, "/lib/.."), names(&layers, "/"));
        assert_eq!(
            find(&layers, "/lib/../etc/passwd").unwrap().0,
            "image passwd"
        );
    }

    #[test]
    fn a_loop_or_more_than_forty_links_is_too_many() {
        let layers = [Mem::default().link("a", "b").link("b", "a")];
        assert_eq!(find(&layers, "/a"), Err(Missed::TooManyLinks));
        let mut chain = Mem::default().file("end", "end");
        let names: Vec<String> = (0..=MAX_LINKS).map(|i| format!("l{i}")).collect();
        for i in 0..MAX_LINKS {
            chain = chain.link(&names[i], &names[i + 1]);
        }
        let chain = chain.link(&names[MAX_LINKS], "end");
        let layers = [chain];
        // l1 is 40 links from the end; l0 is 41.
        assert_eq!(find(&layers, "/l1").unwrap().0, "end");
        assert_eq!(find(&layers, "/l0"), Err(Missed::TooManyLinks));
        // A kept walk counts the links it followed: 39 to reach d, one more
        // is fine, two more are too many, however often it is asked.
        let mut chain = Mem::default().dir("d").file("d/f", "f");
        for i in 0..MAX_LINKS - 2 {
            chain = chain.link(&names[i], &names[i + 1]);
        }
        let layers = [chain
            .link(&names[MAX_LINKS - 2], "d")
            .link("d/one", "f")
            .link("d/two", "one")];
        let walks = Walks::default();
        let merged = Merged::with_walks(&layers, &walks);
        for _ in 0..2 {
            assert_eq!(merged.lookup("/l0/f", true).unwrap().path, "d/f");
            assert_eq!(merged.lookup("/l0/one", true).unwrap().path, "d/f");
            assert_eq!(
                merged.lookup("/l0/two", true).unwrap_err(),
                Missed::TooManyLinks
            );
        }
        assert_eq!(walks.0.read().unwrap().len(), 1, "one walk kept, for l0");
    }

    #[test]
    fn a_made_up_directory_reports_the_topmost_one_a_tar_has() {
        let implicit = |mem: Mem, path| mem.with(path, Kind::Directory, "implicit");
        let layers = [
            Mem::default()
                .with("", Kind::Directory, "root 0")
                .with("etc", Kind::Directory, "etc 0")
                .file("etc/a", "a")
                .dir("gone")
                .file("file", "file"),
            implicit(implicit(implicit(Mem::default(), ""), "etc"), "gone")
                .file("etc/b", "b")
                .with(".wh.gone", Kind::Other, "marker")
                .file("gone/new", "new"),
            implicit(implicit(implicit(Mem::default(), ""), "etc"), "gone")
                .file("etc/c", "c")
                .file("gone/newer", "newer"),
            implicit(implicit(Mem::default(), ""), "file").file("file/x", "x"),
        ];
        // Layers 1 and 2 have made-up entries for etc only.
        assert_eq!(find(&layers, "/etc").unwrap(), ("etc 0", 0, "etc".into()));
        assert_eq!(find(&layers, "/etc/c/..").unwrap().0, "etc 0");
        assert_eq!(find(&layers, "/").unwrap(), ("root 0", 0, String::new()));
        // Below a whiteout or a file, the made-up directory is all there is.
        assert_eq!(
            find(&layers, "/gone").unwrap(),
            ("implicit", 2, "gone".into())
        );
        assert_eq!(
            find(&layers, "/file").unwrap(),
            ("implicit", 3, "file".into())
        );
        assert_eq!(names(&layers, "/etc"), ["a", "b", "c"]);
        let bare = [implicit(Mem::default(), "").file("a", "a")];
        assert!(Merged::new(&bare)
            .lookup("/", true)
            .unwrap()
            .entry
            .is_none());
    }

    #[test]
    fn the_root_is_the_topmost_entry_for_it_or_none() {
        let bare = [Mem::default().file("a", "a")];
        let found = Merged::new(&bare).lookup("/", true).unwrap();
        assert_eq!((found.path.as_str(), found.entry.is_none()), ("", true));
        let layers = [
            Mem::default().with("", Kind::Directory, "root 0"),
            Mem::default().with("", Kind::Directory, "root 1"),
        ];
        assert_eq!(find(&layers, "").unwrap(), ("root 1", 1, String::new()));
        assert_eq!(find(&layers, "/..").unwrap().0, "root 1");
    }
}
