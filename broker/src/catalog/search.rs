//! Full-text search over the catalog replica: an in-memory index updated on
//! every change.
//!
//! Text is folded before indexing and before matching: lower case, German
//! umlauts and ß spelled out (`München` → `muenchen`, `Straße` → `strasse`),
//! other Latin diacritics dropped (`é` → `e`). Title, dataset id, keywords and
//! description are split into words; a query word matches any indexed word
//! that contains it (so `zaehler` and `zähler` both find `Stromzähler`).
//! Every query word must match (AND). Filters (owner, theme, classification)
//! narrow the result. Ranking: title and id hits weigh 3, keyword hits 2,
//! description hits 1, and a whole-word hit counts double; ties sort by owner
//! and id.
//!
//! The index keeps every word once with the documents it occurs in, and a
//! sorted map from every suffix of every word to the words: a query word is
//! a prefix of some suffix exactly when it is a substring of the word.

use super::entry::{CatalogEntry, Theme};
use allmende_policies::Classification;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

/// Field weights.
const W_TITLE: u8 = 3;
const W_KEYWORD: u8 = 2;
const W_DESCRIPTION: u8 = 1;

/// The most results a search returns.
pub const MAX_LIMIT: usize = 1_000;
/// Results when the query does not say.
pub const DEFAULT_LIMIT: usize = 50;

/// Folds text for matching: lower case, umlauts and ß spelled out, other
/// Latin diacritics removed.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            'ä' | 'Ä' => out.push_str("ae"),
            'ö' | 'Ö' => out.push_str("oe"),
            'ü' | 'Ü' => out.push_str("ue"),
            'ß' | 'ẞ' => out.push_str("ss"),
            'à' | 'á' | 'â' | 'ã' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Å' => out.push('a'),
            'ç' | 'Ç' => out.push('c'),
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => out.push('e'),
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => out.push('i'),
            'ñ' | 'Ñ' => out.push('n'),
            'ò' | 'ó' | 'ô' | 'õ' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ø' => out.push('o'),
            'ù' | 'ú' | 'û' | 'Ù' | 'Ú' | 'Û' => out.push('u'),
            'ý' | 'ÿ' | 'Ý' => out.push('y'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Folded words of `text` (runs of letters and digits).
pub fn words(text: &str) -> Vec<String> {
    fold(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A search: words (AND) and filters; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub text: String,
    pub owner: Option<String>,
    pub theme: Option<Theme>,
    pub classification: Option<Classification>,
    /// At most this many results (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub limit: Option<usize>,
}

impl SearchQuery {
    /// A text query without filters.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// One hit: the entry's key and score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// (owner, dataset id)
    pub key: (String, String),
    pub score: u32,
}

/// The hits of a search, best first, and how many entries matched in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchHits {
    pub hits: Vec<Hit>,
    pub total: usize,
}

#[derive(Debug, Clone)]
struct Doc {
    key: (String, String),
    owner: String,
    themes: u16,
    classification: Classification,
}

fn theme_bit(t: Theme) -> u16 {
    let i = Theme::ALL.iter().position(|x| *x == t).unwrap_or(0);
    1u16 << i
}

/// The in-memory search index over catalog entries.
#[derive(Debug, Default)]
pub struct SearchIndex {
    /// Document slots; `None` for removed or replaced documents.
    docs: Vec<Option<Doc>>,
    live: usize,
    by_key: HashMap<(String, String), u32>,
    /// Word id → (doc slot, field weight), in slot order.
    postings: Vec<Vec<(u32, u8)>>,
    word_ids: HashMap<String, u32>,
    words: Vec<String>,
    /// Every suffix of every word → the ids of the words with that suffix.
    suffixes: BTreeMap<String, Vec<u32>>,
}

impl SearchIndex {
    /// An index over `entries`.
    pub fn build<'a>(entries: impl IntoIterator<Item = &'a CatalogEntry>) -> Self {
        let mut idx = Self::default();
        for e in entries {
            idx.upsert(e);
        }
        idx
    }

    /// Number of entries indexed.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn word_id(&mut self, w: &str) -> u32 {
        if let Some(id) = self.word_ids.get(w) {
            return *id;
        }
        let id = u32::try_from(self.words.len()).unwrap_or(u32::MAX);
        self.words.push(w.to_owned());
        self.word_ids.insert(w.to_owned(), id);
        self.postings.push(Vec::new());
        for (i, _) in w.char_indices() {
            self.suffixes.entry(w[i..].to_owned()).or_default().push(id);
        }
        id
    }

    /// Adds or replaces the entry.
    pub fn upsert(&mut self, e: &CatalogEntry) {
        let key = (e.owner.clone(), e.dataset.id.clone());
        self.remove(&key.0, &key.1);
        let slot = u32::try_from(self.docs.len()).unwrap_or(u32::MAX);
        let mut weights: HashMap<u32, u8> = HashMap::new();
        let mut add = |idx: &mut Self, text: &str, w: u8| {
            for word in words(text) {
                let id = idx.word_id(&word);
                let cur = weights.entry(id).or_insert(0);
                *cur = (*cur).max(w);
            }
        };
        add(self, &e.dataset.title, W_TITLE);
        add(self, &e.dataset.id, W_TITLE);
        for k in &e.dataset.keywords {
            add(self, k, W_KEYWORD);
        }
        add(self, &e.dataset.description, W_DESCRIPTION);
        for (id, w) in weights {
            if let Some(p) = self.postings.get_mut(id as usize) {
                p.push((slot, w));
            }
        }
        self.docs.push(Some(Doc {
            key: key.clone(),
            owner: e.owner.clone(),
            themes: e.dataset.themes.iter().fold(0, |m, t| m | theme_bit(*t)),
            classification: e.dataset.classification,
        }));
        self.by_key.insert(key, slot);
        self.live += 1;
    }

    /// Removes an entry; returns whether it was indexed.
    pub fn remove(&mut self, owner: &str, dataset: &str) -> bool {
        let Some(slot) = self.by_key.remove(&(owner.to_owned(), dataset.to_owned())) else {
            return false;
        };
        if let Some(d) = self.docs.get_mut(slot as usize) {
            *d = None;
        }
        self.live = self.live.saturating_sub(1);
        // Dead slots stay in the postings until they outnumber the live ones.
        let dead = self.docs.len() - self.live;
        if dead > 1_024 && dead > self.live {
            self.compact();
        }
        true
    }

    fn compact(&mut self) {
        let mut remap = vec![u32::MAX; self.docs.len()];
        let mut docs = Vec::with_capacity(self.live);
        for (old, d) in self.docs.drain(..).enumerate() {
            if let Some(d) = d {
                remap[old] = u32::try_from(docs.len()).unwrap_or(u32::MAX);
                docs.push(Some(d));
            }
        }
        self.docs = docs;
        for p in &mut self.postings {
            p.retain_mut(|(slot, _)| {
                let new = remap.get(*slot as usize).copied().unwrap_or(u32::MAX);
                *slot = new;
                new != u32::MAX
            });
        }
        self.by_key = self
            .docs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.as_ref()
                    .map(|d| (d.key.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            })
            .collect();
    }

    /// Runs a search.
    pub fn search(&self, q: &SearchQuery) -> SearchHits {
        let n = self.docs.len();
        let terms = words(&q.text);
        let theme_mask = q.theme.map(theme_bit);
        let passes = |d: &Doc| {
            q.owner.as_ref().is_none_or(|o| &d.owner == o)
                && theme_mask.is_none_or(|m| d.themes & m != 0)
                && q.classification.is_none_or(|c| d.classification == c)
        };
        let mut scores: Vec<u32> = vec![0; n];
        let mut matched: Vec<bool> = vec![true; n];
        let mut per_term: Vec<u8> = vec![0; n];
        for term in &terms {
            per_term.iter_mut().for_each(|x| *x = 0);
            let from = (Bound::Included(term.as_str()), Bound::Unbounded);
            for (suffix, ids) in self.suffixes.range::<str, _>(from) {
                if !suffix.starts_with(term.as_str()) {
                    break;
                }
                for id in ids {
                    let whole = self.words.get(*id as usize).is_some_and(|w| w == term);
                    for (slot, w) in self.postings.get(*id as usize).into_iter().flatten() {
                        let w = if whole { w * 2 } else { *w };
                        if let Some(cur) = per_term.get_mut(*slot as usize) {
                            *cur = (*cur).max(w);
                        }
                    }
                }
            }
            for i in 0..n {
                if per_term[i] == 0 {
                    matched[i] = false;
                } else {
                    scores[i] += u32::from(per_term[i]);
                }
            }
        }
        let mut hits: Vec<(u32, &Doc)> = self
            .docs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let d = d.as_ref()?;
                (matched[i] && passes(d)).then_some((scores[i], d))
            })
            .collect();
        let total = hits.len();
        let limit = q.effective_limit();
        let order =
            |a: &(u32, &Doc), b: &(u32, &Doc)| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key));
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, order);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(order);
        SearchHits {
            hits: hits
                .into_iter()
                .map(|(score, d)| Hit {
                    key: d.key.clone(),
                    score,
                })
                .collect(),
            total,
        }
    }
}

/// The baseline the index is measured against: fold every entry's text on
/// every query and look for each word (same matching rules, no ranking
/// beyond the index's order). Used by the benchmark and the equivalence test.
pub fn naive_search<'a>(
    entries: impl IntoIterator<Item = &'a CatalogEntry>,
    q: &SearchQuery,
) -> Vec<(String, String)> {
    let terms = words(&q.text);
    let mut out: Vec<(String, String)> = entries
        .into_iter()
        .filter(|e| {
            q.owner.as_ref().is_none_or(|o| &e.owner == o)
                && q.theme.is_none_or(|t| e.dataset.themes.contains(&t))
                && q.classification
                    .is_none_or(|c| e.dataset.classification == c)
        })
        .filter(|e| {
            if terms.is_empty() {
                return true;
            }
            let mut text = words(&e.dataset.title);
            text.extend(words(&e.dataset.id));
            for k in &e.dataset.keywords {
                text.extend(words(k));
            }
            text.extend(words(&e.dataset.description));
            terms
                .iter()
                .all(|t| text.iter().any(|w| w.contains(t.as_str())))
        })
        .map(|e| (e.owner.clone(), e.dataset.id.clone()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::catalog::entry::tests::smart_meter;

    fn entry(owner: &str, id: &str, title: &str, desc: &str, theme: Theme) -> CatalogEntry {
        let mut d = smart_meter();
        d.id = id.into();
        d.title = title.into();
        d.description = desc.into();
        d.keywords = vec![];
        d.themes = [theme].into();
        if owner == "stadt" {
            d.classification = Classification::Public;
        }
        CatalogEntry {
            owner: owner.into(),
            owner_node: format!("{owner}-1"),
            publisher_name: owner.into(),
            version: 1,
            updated_at_ms: 0,
            dataset: d,
        }
    }

    fn sample() -> Vec<CatalogEntry> {
        vec![
            entry(
                "swm",
                "smart-meter-readings",
                "Stromzähler-Messwerte",
                "Verbrauch der Haushalte in München",
                Theme::Energy,
            ),
            entry(
                "stadt",
                "air-quality",
                "Luftqualität",
                "Stickstoffdioxid an der Landshuter Allee, München",
                Theme::Environment,
            ),
            entry(
                "stadt",
                "traffic-counts",
                "Verkehrszählung",
                "Fahrzeuge pro Stunde an der Leopoldstraße",
                Theme::Transport,
            ),
        ]
    }

    fn keys(h: &SearchHits) -> Vec<&str> {
        h.hits.iter().map(|h| h.key.1.as_str()).collect()
    }

    #[test]
    fn folding_spells_out_umlauts() {
        assert_eq!(
            fold("München Straße ÄÖÜ Café"),
            "muenchen strasse aeoeue cafe"
        );
        assert_eq!(
            words("Smart-Meter, 15-min!"),
            ["smart", "meter", "15", "min"]
        );
    }

    #[test]
    fn search_matches_folded_substrings_and_ands_words() {
        let entries = sample();
        let idx = SearchIndex::build(&entries);
        assert_eq!(keys(&idx.search(&SearchQuery::text("MÜNCHEN"))).len(), 2);
        assert_eq!(
            keys(&idx.search(&SearchQuery::text("muenchen"))),
            keys(&idx.search(&SearchQuery::text("München")))
        );
        assert_eq!(
            keys(&idx.search(&SearchQuery::text("zaehler"))),
            ["smart-meter-readings"]
        );
        assert_eq!(
            keys(&idx.search(&SearchQuery::text("strasse fahrzeuge"))),
            ["traffic-counts"]
        );
        assert!(
            idx.search(&SearchQuery::text("strasse luft"))
                .hits
                .is_empty()
        );
        assert_eq!(idx.search(&SearchQuery::text("")).total, 3);
    }

    #[test]
    fn filters_narrow_and_title_hits_rank_first() {
        let entries = sample();
        let idx = SearchIndex::build(&entries);
        let q = SearchQuery {
            owner: Some("stadt".into()),
            ..SearchQuery::default()
        };
        assert_eq!(keys(&idx.search(&q)), ["air-quality", "traffic-counts"]);
        let q = SearchQuery {
            theme: Some(Theme::Energy),
            ..SearchQuery::default()
        };
        assert_eq!(keys(&idx.search(&q)), ["smart-meter-readings"]);
        let q = SearchQuery {
            classification: Some(Classification::Personal),
            text: "münchen".into(),
            ..SearchQuery::default()
        };
        assert_eq!(keys(&idx.search(&q)), ["smart-meter-readings"]);
        // "luft" is in a title, "allee" only in a description: the title hit wins.
        let mut more = entries.clone();
        more.push(entry(
            "swm",
            "luftreiniger",
            "Filteranlagen",
            "Luft an der Allee",
            Theme::Energy,
        ));
        let idx = SearchIndex::build(&more);
        assert_eq!(
            keys(&idx.search(&SearchQuery::text("luft"))),
            ["air-quality", "luftreiniger"]
        );
        let limited = idx.search(&SearchQuery {
            limit: Some(1),
            ..SearchQuery::text("luft")
        });
        assert_eq!((limited.total, keys(&limited)), (2, vec!["air-quality"]));
    }

    #[test]
    fn updates_and_removals_change_the_answers() {
        let mut entries = sample();
        let mut idx = SearchIndex::build(&entries);
        entries[0].dataset.title = "Wärmepumpen".into();
        idx.upsert(&entries[0]);
        assert!(idx.search(&SearchQuery::text("zaehler")).hits.is_empty());
        assert_eq!(
            keys(&idx.search(&SearchQuery::text("waermepumpe"))),
            ["smart-meter-readings"]
        );
        assert!(idx.remove("stadt", "air-quality"));
        assert!(!idx.remove("stadt", "air-quality"));
        assert_eq!(idx.len(), 2);
        assert!(idx.search(&SearchQuery::text("luft")).hits.is_empty());
    }

    #[test]
    fn index_agrees_with_the_naive_scan_through_compaction() {
        // Many replacements force compactions; answers must not change.
        let base = sample();
        let mut idx = SearchIndex::build(&base);
        let mut all = base.clone();
        for i in 0..3_000 {
            let mut e = base[i % 3].clone();
            e.dataset.id = format!("ds-{}", i % 300);
            e.dataset.title = format!("Titel {} {}", i % 13, base[i % 3].dataset.title);
            idx.upsert(&e);
            all.retain(|x| !(x.owner == e.owner && x.dataset.id == e.dataset.id));
            all.push(e);
            if i % 5 == 0 {
                let victim = format!("ds-{}", (i * 7) % 300);
                idx.remove("stadt", &victim);
                all.retain(|x| !(x.owner == "stadt" && x.dataset.id == victim));
            }
        }
        assert_eq!(idx.len(), all.len());
        for q in ["münchen", "titel 7", "zaehler", "", "strasse", "ds-1"] {
            let query = SearchQuery {
                limit: Some(MAX_LIMIT),
                ..SearchQuery::text(q)
            };
            let mut got: Vec<(String, String)> =
                idx.search(&query).hits.into_iter().map(|h| h.key).collect();
            got.sort();
            assert_eq!(got, naive_search(&all, &query), "query `{q}`");
        }
    }
}
