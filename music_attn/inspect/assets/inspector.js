/* music_attn attention inspector: piano roll read as music (bars, beats, keyboard, key spelling),
 * attention arcs, every head at once, head roles, playback that the arcs follow, token heatmap, and
 * saving the view as SVG / PNG.  Reads its data from the JSON script element with id "data".
 * Every text that comes from the MIDI file is inserted with textContent, never as HTML.
 * Only what is on screen is drawn: notes and grid lines of the visible stretch (plus a margin). */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const N = D.notes.pitch.length, T = D.tokens.text.length, M = D.music;
  const NOTE = { start: D.notes.start.map((x) => x / 1000), end: D.notes.end.map((x) => x / 1000) };
  const $ = (id) => document.getElementById(id);
  const ROLLOUT = "rollout";
  const state = { layer: D.layers - 1, head: D.heads, selected: null, hover: null, play: null,
                  topk: Math.min(8, D.noteMaps.k), colour: M.trackNames.length > 1 ? "track" : "surprise" };
  const TRACK_COLOURS = ["#3b6fd8", "#e07b39", "#2e9e6a", "#c2417a", "#8a63d2", "#b59a1a", "#2aa3b8", "#7a4e2d"];

  // ---------------------------------------------------------------- data
  function bytes(b64) {
    const s = atob(b64), u = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return u;
  }
  function sparse(m) {
    if (!m) return null;
    const counts = bytes(m.counts), raw = bytes(m.index);
    const index = m.indexBytes === 4 ? new Uint32Array(raw.buffer) : new Uint16Array(raw.buffer);
    const offs = new Uint32Array(counts.length + 1);
    for (let r = 0; r < counts.length; r++) offs[r + 1] = offs[r] + counts[r];
    return { rows: m.rows, heads: m.heads, offs: offs, index: index, value: bytes(m.value) };
  }
  const NOTES = sparse(D.noteMaps), TOKENS = sparse(D.tokenMaps), ROLL = sparse(D.rollout);
  const STRUCT = bytes(D.structure), PATTERN = bytes(D.pattern.value);

  /** Entries [key, weight] of one attention row, strongest first. */
  function row(S, layer, head, i) {
    const r = (layer * S.heads + head) * S.rows + i, out = [];
    for (let e = S.offs[r]; e < S.offs[r + 1]; e++) out.push([S.index[e], S.value[e] / 255]);
    return out;
  }
  function noteRow(i, layer, head) {
    if (layer === undefined) { layer = state.layer; head = state.head; }
    return layer === ROLLOUT ? row(ROLL, 0, 0, i) : row(NOTES, layer, head, i);
  }
  function structureShare(i) {
    return state.layer === ROLLOUT ? null : STRUCT[(state.layer * (D.heads + 1) + state.head) * N + i] / 255;
  }
  function viewLabel() {
    if (state.layer === ROLLOUT) return "rollout";
    return "layer " + (state.layer + 1) + ", " + (state.head === D.heads ? "mean of heads" : "head " + (state.head + 1));
  }
  function noteLabel(i) { return D.notes.name[i] + " #" + (i + 1); }
  function fmt(x, d) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }
  function barBeat(i) {
    const b = D.notes.bar[i];
    return b < 0 ? "" : "bar " + (b + 1) + ", beat " + fmt(D.notes.beatInBar[i], 2).replace(/\.?0+$/, "");
  }

  // ---------------------------------------------------------- text / DOM
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function fillHeader() {
    $("title").textContent = D.title;
    document.title = "music_attn: " + D.title;
    const meters = M.meters.map((m) => m[1]).filter((m, k, a) => a.indexOf(m) === k);
    $("facts").textContent = N + " notes" + (M.bars.length ? ", " + barSpan() + (meters.length ? " in " + meters.join(", ") : "") : "") +
      (M.key ? " · key " + M.key + " (estimated)" : " · drums only: no key");
    if (D.tracks.length) $("tracks").textContent = "Tracks: " + D.tracks.join(", ");
    if (D.lyrics) $("lyrics").textContent = "Lyrics: " + D.lyrics;
    const win = D.window ? "The model sees " + D.window + " tokens at a time. " : "";
    $("notice").textContent = (D.notice || "") + (D.notice ? "" : win.trim());
    if (!TOKENS) $("tokens").hidden = true;
    else $("token-caption").textContent = T + " tokens, " + N + " notes; row = query token, column = key token";
  }
  /** "bars 9–16" (the bars the notes start in, numbered as in the piece), or "16 bars" from the start. */
  function barSpan() {
    let lo = Infinity, hi = -Infinity;
    for (const b of D.notes.bar) if (b >= 0) { lo = Math.min(lo, b); hi = Math.max(hi, b); }
    if (lo === Infinity) return (M.bars.length - 1) + " bars";
    return lo === 0 ? (hi + 1) + " bars" : "bars " + (lo + 1) + "\u2013" + (hi + 1);
  }
  function fillPickers() {
    for (let l = 0; l < D.layers; l++) $("layer").appendChild(new Option("layer " + (l + 1), l));
    if (ROLL) $("layer").appendChild(new Option("rollout (all layers)", ROLLOUT));
    for (let h = 0; h < D.heads; h++) $("head").appendChild(new Option("head " + (h + 1), h));
    $("head").appendChild(new Option("mean of heads", D.heads));
    $("layer").value = state.layer;
    $("head").value = state.head;
    $("topk").max = D.noteMaps.k;
    $("topk").value = state.topk;
    $("topk-value").textContent = state.topk;
    $("colour").value = state.colour;
  }

  // ---------------------------------------------------------- geometry
  const G = layout();
  function layout() {
    let end = 1, lo = 58, hi = 62;
    if (N) {
      end = 0; lo = 127; hi = 0;
      for (let i = 0; i < N; i++) {
        end = Math.max(end, NOTE.end[i]); lo = Math.min(lo, D.notes.pitch[i]); hi = Math.max(hi, D.notes.pitch[i]);
      }
      lo -= 2; hi += 2;
    }
    const rows = hi - lo + 1, rowH = Math.max(5, Math.min(12, Math.floor(520 / rows)));
    const t0 = timeOrigin(), span = Math.max(end - t0, 1e-3);
    return { t0: t0, end: end, lo: lo, hi: hi, rowH: rowH, top: 78, pad: 8, pxs: Math.max(40, 1100 / span),
             height: 78 + rows * rowH + 10, keysW: 52 };
  }
  /** Where the roll starts (s): the bar line at or before the first note, so a passage from the
   *  middle of a piece does not open on empty bars. */
  function timeOrigin() {
    if (!N) return 0;
    const first = Math.min.apply(null, NOTE.start);
    let t0 = first < 2 ? 0 : Math.floor(first);
    for (const ms of M.bars) if (ms / 1000 <= first + 1e-6) t0 = ms / 1000;
    return t0;
  }
  function width() { return G.pad * 2 + (G.end - G.t0) * G.pxs; }
  function nx(t) { return G.pad + (t - G.t0) * G.pxs; }
  function ny(p) { return G.top + (G.hi - p) * G.rowH; }
  /** Where arcs meet a note: just inside its onset (attention links onsets; long notes stay readable). */
  function centre(i) {
    const w = (NOTE.end[i] - NOTE.start[i]) * G.pxs;
    return [nx(NOTE.start[i]) + Math.min(6, w / 2), ny(D.notes.pitch[i]) + G.rowH / 2];
  }
  function timeAt(x) { return G.t0 + (x - G.pad) / G.pxs; }
  const isBlack = (p) => [1, 3, 6, 8, 10].indexOf(((p % 12) + 12) % 12) >= 0;
  const FLAT = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"];
  const SHARP = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
  /** A key of the keyboard: its pitch spelled in the piece's key, or its drum name when only drums play. */
  function pitchName(p) {
    if (!M.key && M.drumNames) return M.drumNames[p];
    return M.pitchNames ? M.pitchNames[p] : (M.flats ? FLAT : SHARP)[p % 12] + (Math.floor(p / 12) - 1);
  }

  // Notes sorted by onset, for finding the visible ones by binary search.
  const BY_START = Array.from({ length: N }, (_, i) => i).sort((a, b) => NOTE.start[a] - NOTE.start[b]);
  const MAX_LEN = N ? Math.max.apply(null, BY_START.map((i) => NOTE.end[i] - NOTE.start[i])) : 0;
  function firstStartingAfter(t) {
    let a = 0, b = N;
    while (a < b) { const m = (a + b) >> 1; if (NOTE.start[BY_START[m]] < t) a = m + 1; else b = m; }
    return a;
  }

  // ---------------------------------------------------------------- colour
  const SURPRISE = (function () {
    const s = D.notes.surprise.filter((x) => x !== null).sort((a, b) => a - b);
    if (!s.length) return { lo: 0, hi: 1 };
    const lo = s[Math.floor(0.05 * (s.length - 1))], hi = s[Math.floor(0.95 * (s.length - 1))];
    return { lo: lo, hi: Math.max(hi, lo + 1e-6) };
  })();
  function surpriseColour(s) {
    const stops = [[253, 233, 201], [244, 162, 89], [209, 73, 91], [106, 27, 77]];
    if (s === null) return "#c9ced6";
    const u = Math.max(0, Math.min(1, (s - SURPRISE.lo) / (SURPRISE.hi - SURPRISE.lo)));
    const t = u * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
    return "rgb(" + stops[k].map((v, j) => Math.round(v + f * (stops[k + 1][j] - v))).join(",") + ")";
  }
  function noteColour(i) {
    return state.colour === "track" ? TRACK_COLOURS[D.notes.track[i] % TRACK_COLOURS.length] : surpriseColour(D.notes.surprise[i]);
  }
  function drawLegend() {
    const box = $("legend");
    clear(box);
    if (state.colour === "track") {
      M.trackNames.forEach((name, t) => {
        const s = el("span");
        const sw = el("span", undefined, "swatch");
        sw.style.background = TRACK_COLOURS[t % TRACK_COLOURS.length];
        s.appendChild(sw);
        s.appendChild(document.createTextNode(name));
        box.appendChild(s);
      });
    } else {
      box.appendChild(el("span", "surprise"));
      box.appendChild(el("span", undefined, "ramp"));
      box.appendChild(el("span", fmt(SURPRISE.lo, 1) + " – " + fmt(SURPRISE.hi, 1) + " nats"));
    }
  }

  // ---------------------------------------------------------- keyboard
  function drawKeys() {
    const k = $("keys");
    clear(k);
    k.setAttribute("width", G.keysW);
    k.setAttribute("height", G.height);
    for (let p = G.lo; p <= G.hi; p++) {
      const y = ny(p), black = isBlack(p);
      const key = svg("rect", { x: black ? 22 : 14, y: y, width: black ? 30 : 38, height: G.rowH,
                                fill: black ? "#3a3f4b" : "#ffffff", stroke: "#d0d4dc", "stroke-width": 0.5, "data-p": p });
      key.appendChild(svg("title", {})).textContent = pitchName(p);
      k.appendChild(key);
      if (p % 12 === 0 && M.key) {
        const t = svg("text", { x: 2, y: y + G.rowH - 1, "font-size": Math.min(10, G.rowH + 1), fill: "#475467" });
        t.textContent = pitchName(p);
        k.appendChild(t);
      }
    }
    k.addEventListener("mousemove", (ev) => {
      const p = Number(ev.target.dataset && ev.target.dataset.p);
      if (p) showTooltipLines([pitchName(p) + " (MIDI " + p + ")"], ev);
    });
    k.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  }

  // ---------------------------------------------------- visible window
  const view = { a: 0, b: 0 };             // seconds drawn (the visible stretch plus a margin)
  const rendered = new Map();              // note index -> its rect
  function visibleSeconds() {
    const wrap = $("rollwrap"), w = wrap.clientWidth || 1200;
    return [timeAt(wrap.scrollLeft), timeAt(wrap.scrollLeft + w)];
  }
  function drawView(force) {
    const [a, b] = visibleSeconds(), span = b - a;
    if (!force && a >= view.a && b <= view.b) return;
    view.a = a - span; view.b = b + span;
    const roll = $("roll");
    roll.setAttribute("width", width());
    roll.setAttribute("height", G.height);
    $("bg").setAttribute("width", width());
    $("bg").setAttribute("height", G.height);
    drawGrid();
    drawNotes();
    drawMarks();
    refresh();
  }

  function drawGrid() {
    const g = $("grid");
    clear(g);
    const x0 = Math.max(0, nx(view.a)), x1 = Math.min(width(), nx(view.b));
    for (let p = G.lo; p <= G.hi; p++) {
      if (isBlack(p)) g.appendChild(svg("rect", { x: x0, y: ny(p), width: x1 - x0, height: G.rowH, fill: "#f6f7f9" }));
      if (p % 12 === 0) g.appendChild(svg("line", { x1: x0, x2: x1, y1: ny(p) + G.rowH, y2: ny(p) + G.rowH, stroke: "#d7dbe3" }));
    }
    if (M.bars.length) drawBars(g); else drawSeconds(g);
  }
  function drawBars(g) {
    const bottom = G.height - 10;
    for (const ms of M.beats) {
      const t = ms / 1000;
      if (t >= view.a && t <= view.b) g.appendChild(svg("line", { x1: nx(t), x2: nx(t), y1: G.top, y2: bottom, stroke: "#eef0f4" }));
    }
    const gap = (M.bars[M.bars.length - 1] - M.bars[0]) / 1000 / Math.max(1, M.bars.length - 1) * G.pxs;   // px per bar
    const every = [1, 2, 4, 8, 16, 32, 64].find((n) => n * gap >= 26) || 128;
    const meterAt = new Map(M.meters);
    let meter = null, shown = false;
    for (let b = 0; b < M.bars.length; b++) {
      const t = M.bars[b] / 1000;
      if (meterAt.has(b)) meter = meterAt.get(b);
      if (t < Math.max(view.a, G.t0 - 1e-6) || t > view.b) continue;
      if (!shown && meter && !meterAt.has(b)) meterAt.set(b, meter);      // the metre in force where the view starts
      shown = true;
      g.appendChild(svg("line", { x1: nx(t), x2: nx(t), y1: G.top - 14, y2: bottom, stroke: "#aeb4c0", "stroke-width": 1, class: "barline" }));
      if (b % every === 0 && b < M.bars.length - 1) {
        const label = svg("text", { x: nx(t) + 3, y: G.top - 4, "font-size": 11, fill: "#475467", class: "barnum" });
        label.textContent = b + (M.firstBar || 1);
        g.appendChild(label);
      }
      if (meterAt.has(b)) {
        const m = svg("text", { x: nx(t) + 3, y: G.top - 18, "font-size": 11, "font-weight": 600, fill: "#1f2430", class: "meter" });
        m.textContent = meterAt.get(b);
        g.appendChild(m);
      }
    }
  }
  function drawSeconds(g) {
    const step = [1, 2, 5, 10, 20, 30, 60].find((s) => s * G.pxs >= 50) || 120;
    for (let t = Math.max(0, Math.floor(view.a / step) * step); t <= Math.min(G.end, view.b); t += step) {
      g.appendChild(svg("line", { x1: nx(t), x2: nx(t), y1: G.top - 4, y2: G.height - 10, stroke: "#eef0f4" }));
      g.appendChild(svg("text", { x: nx(t) + 2, y: G.top - 4, "font-size": 10, fill: "#98a2b3" })).textContent = t + " s";
    }
  }
  function drawNotes() {
    const g = $("notes");
    clear(g);
    rendered.clear();
    if (state.hover !== null) { state.hover = null; $("tooltip").hidden = true; }   // its rect is gone
    const from = firstStartingAfter(view.a - MAX_LEN), to = firstStartingAfter(view.b);
    for (let k = from; k < to; k++) {
      const i = BY_START[k];
      if (NOTE.end[i] < view.a) continue;
      const w = Math.max(2, (NOTE.end[i] - NOTE.start[i]) * G.pxs - 1);
      const r = svg("rect", { x: nx(NOTE.start[i]), y: ny(D.notes.pitch[i]) + 0.5, width: w, height: G.rowH - 1, rx: 2,
                              class: "note", fill: noteColour(i), stroke: "rgba(0,0,0,0.3)", "stroke-width": 0.5, "data-i": i });
      g.appendChild(r);
      rendered.set(i, r);
    }
  }
  function drawMarks() {
    const g = $("marks");
    clear(g);
    if (M.marker === null || M.marker === undefined) return;
    const x = nx(M.marker / 1000);
    g.appendChild(svg("line", { x1: x, x2: x, y1: G.top - 30, y2: G.height - 10, stroke: "#c2410c", "stroke-width": 2,
                                "stroke-dasharray": "5 3", class: "continuation" }));
    g.appendChild(svg("text", { x: x + 4, y: G.top - 32, "font-size": 11, fill: "#c2410c" })).textContent = "continuation \u2192";
  }

  // ---------------------------------------------------------------- zoom
  function zoom(factor) {
    const wrap = $("rollwrap"), mid = timeAt(wrap.scrollLeft + wrap.clientWidth / 2);
    G.pxs = Math.max(2, Math.min(2000, G.pxs * factor));
    $("roll").setAttribute("width", width());
    wrap.scrollLeft = Math.max(0, nx(mid) - wrap.clientWidth / 2);
    $("roll").dataset.pxs = G.pxs.toFixed(3);
    drawView(true);
  }

  // ---------------------------------------------------------------- arcs
  // Arcs: the top-k strongest keys of the row; width and opacity grow with the weight relative
  // to the row's strongest entry, but never to less than ARC_FLOOR (diffuse rows stay thin).
  const ARC_FLOOR = 0.3;
  function focus() { return state.hover !== null ? state.hover : state.selected !== null ? state.selected : state.play; }
  function drawArcs(i) {
    const g = $("arcs");
    clear(g);
    g.dataset.from = i === null ? "" : i;
    if (i === null) return;
    const entries = noteRow(i).slice(0, state.topk);
    const scale = Math.max(entries.length ? entries[0][1] : 1, ARC_FLOOR);
    for (const [j, w] of entries) g.appendChild(j === i ? selfRing(i, w / scale) : arc(i, j, w / scale, w));
  }
  function arc(i, j, rel, w) {
    const [x1, y1] = centre(i), [x2, y2] = centre(j);
    let cx = (x1 + x2) / 2, cy = Math.max(4, Math.min(y1, y2) - 18 - Math.min(Math.abs(x1 - x2) * 0.3, 160));
    if (Math.abs(x1 - x2) < 14) { cx = Math.min(x1, x2) - 16 - 0.4 * Math.abs(y1 - y2); cy = (y1 + y2) / 2; }   // a chord: bow sideways
    return svg("path", { d: "M" + x1.toFixed(1) + "," + y1.toFixed(1) + " Q" + cx.toFixed(1) + "," + cy.toFixed(1) +
                            " " + x2.toFixed(1) + "," + y2.toFixed(1),
                         class: "arc", fill: "none", stroke: "#2f5bd3", "stroke-linecap": "round",
                         "stroke-width": (0.75 + 6 * rel).toFixed(2), "stroke-opacity": (0.15 + 0.85 * rel).toFixed(2),
                         "data-j": j, "data-w": w.toFixed(3) });
  }
  function selfRing(i, rel) {
    const [x, y] = centre(i);
    return svg("circle", { cx: x, cy: y, r: 5 + 5 * rel, class: "self", fill: "none", stroke: "#2f5bd3",
                           "stroke-width": (0.75 + 3 * rel).toFixed(2), "stroke-opacity": (0.15 + 0.85 * rel).toFixed(2), "data-j": i });
  }

  function describe(i) {
    const lines = [noteLabel(i) + " (MIDI " + D.notes.pitch[i] + ")" + (M.trackNames.length > 1 ? ", " + M.trackNames[D.notes.track[i]] : ""),
      (barBeat(i) ? barBeat(i) + " · " : "") + "onset " + fmt(NOTE.start[i], 2) + " s · lasts " + fmt(NOTE.end[i] - NOTE.start[i], 2) + " s",
      "surprise " + fmt(D.notes.surprise[i], 2) + " nats"];
    const top = noteRow(i).filter((e) => e[0] !== i).slice(0, 3).map((e) => noteLabel(e[0]) + " " + fmt(e[1], 2));
    lines.push(viewLabel() + ": " + (top.length ? top.join(", ") : "no earlier note"));
    const s = structureShare(i);
    if (s !== null) lines.push("structure tokens " + Math.round(100 * s) + "%");
    return lines;
  }
  function showInfo() {
    const box = $("info"), i = focus();
    clear(box);
    if (i === null) { box.appendChild(el("div", "No note selected. " + viewLabel() + ".", "top")); return; }
    const lines = describe(i);
    box.appendChild(el("div", lines.slice(0, 3).join(" · ")));
    box.appendChild(el("div", "attends to, in " + lines.slice(3).join(" · "), "top"));
  }
  function showTooltipLines(lines, ev) {
    const tip = $("tooltip");
    clear(tip);
    for (const line of lines) tip.appendChild(el("div", line));
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 350) + "px";
    tip.style.top = ev.clientY + 14 + "px";
  }

  let marked = [];
  function markSelected() {
    for (const r of marked) r.classList.remove("selected");
    marked = [];
    const r = state.selected !== null ? rendered.get(state.selected) : null;
    if (r) { r.classList.add("selected"); marked.push(r); }
  }
  function refresh() {
    const i = focus();
    drawArcs(i);
    showInfo();
    markSelected();
    drawHeadGrid(i);
    markSelectedTokens();
  }
  function changeView() {
    $("head").disabled = state.layer === ROLLOUT;
    drawHeatmap();
    markRoleRow();
    refresh();
  }
  function select(i) {
    state.selected = i;
    if (i !== null) keepInView(i);
    refresh();
  }
  function keepInView(i) {
    const wrap = $("rollwrap"), x = nx(NOTE.start[i]);
    if (x < wrap.scrollLeft + 40 || x > wrap.scrollLeft + wrap.clientWidth - 80) {
      wrap.scrollLeft = x - 80;
      drawView(false);
    }
  }
  function wireRoll() {
    const g = $("notes");
    g.addEventListener("click", (ev) => { const i = noteOf(ev); if (i !== null) select(i === state.selected ? null : i); });
    g.addEventListener("mouseover", (ev) => { const i = noteOf(ev); if (i !== null) { state.hover = i; refresh(); showTooltipLines(describe(i), ev); } });
    g.addEventListener("mousemove", (ev) => { const i = noteOf(ev); if (i !== null) showTooltipLines(describe(i), ev); });
    g.addEventListener("mouseout", () => { state.hover = null; $("tooltip").hidden = true; refresh(); });
    $("rollwrap").addEventListener("scroll", () => drawView(false), { passive: true });
    $("rollwrap").addEventListener("wheel", (ev) => {
      if (!ev.ctrlKey) return;
      ev.preventDefault();
      zoom(ev.deltaY < 0 ? 1.25 : 0.8);
    }, { passive: false });
    document.addEventListener("keydown", (ev) => {
      if (ev.target.tagName === "SELECT" || ev.target.tagName === "INPUT" || !N) return;
      const cur = state.selected === null ? -1 : state.selected;
      if (ev.key === "ArrowRight") select(Math.min(N - 1, cur + 1));
      if (ev.key === "ArrowLeft") select(Math.max(0, cur - 1));
    });
  }
  function noteOf(ev) {
    const t = ev.target;
    return t && t.classList && t.classList.contains("note") ? Number(t.dataset.i) : null;
  }

  // ------------------------------------------------------- every head
  // One cell per layer and head.  With a note in focus: its attention to the notes before it,
  // as bars placed by how many beats back they start (right edge = the note itself, left = 16
  // beats back).  Without: the head's mean attention by distance back in beats (Python's pattern).
  const CELL_W = 132, CELL_H = 44, BACK = (D.pattern.bins - 1) / D.pattern.perBeat;
  const cells = [];
  function buildHeadGrid() {
    const grid = $("headgrid");
    grid.style.gridTemplateColumns = "56px repeat(" + D.heads + ", " + (CELL_W + 2) + "px)";
    grid.appendChild(el("span"));
    for (let h = 0; h < D.heads; h++) grid.appendChild(el("span", "head " + (h + 1), "lab"));
    for (let l = D.layers - 1; l >= 0; l--) {
      grid.appendChild(el("span", "layer " + (l + 1), "lab"));
      for (let h = 0; h < D.heads; h++) {
        const c = el("canvas", undefined, "cell");
        c.width = CELL_W; c.height = CELL_H;
        c.dataset.layer = l; c.dataset.head = h;
        c.title = "layer " + (l + 1) + ", head " + (h + 1);
        c.addEventListener("click", () => pickHead(l, h));
        grid.appendChild(c);
        cells.push(c);
      }
    }
  }
  function pickHead(l, h) {
    state.layer = l; state.head = h;
    $("layer").value = l; $("head").value = h;
    changeView();
  }
  function beatOf(i) { return D.notes.beat[i]; }
  function drawHeadGrid(i) {
    $("heads-caption").textContent = i === null
      ? "each head's mean attention by distance back in quarter notes (right: the same onset; left: " + BACK + " back); click a cell to pick the head"
      : "what " + noteLabel(i) + " attends to in each head, by how far back (right: now; left: " + BACK + " quarter notes back)";
    for (const c of cells) {
      const l = Number(c.dataset.layer), h = Number(c.dataset.head), ctx = c.getContext("2d");
      ctx.clearRect(0, 0, CELL_W, CELL_H);
      ctx.fillStyle = "#2f5bd3";
      if (i === null) {
        const base = (l * (D.heads + 1) + h) * D.pattern.bins, bw = CELL_W / D.pattern.bins;
        for (let b = 0; b < D.pattern.bins; b++) {
          const v = PATTERN[base + b] / 255, x = CELL_W - (b + 1) * bw;
          ctx.fillRect(x + 0.5, CELL_H - 2 - v * (CELL_H - 6), Math.max(1, bw - 1), v * (CELL_H - 6));
        }
      } else {
        const entries = row(NOTES, l, h, i), top = entries.length ? entries[0][1] : 1;
        for (const [j, w] of entries) {
          const back = beatOf(i) - beatOf(j);
          if (back > BACK) continue;
          const x = CELL_W - 3 - back / BACK * (CELL_W - 6), v = w / Math.max(top, 0.05);
          ctx.globalAlpha = 0.35 + 0.65 * v;
          ctx.fillRect(x - 1.5, CELL_H - 2 - v * (CELL_H - 6), 3, v * (CELL_H - 6));
        }
        ctx.globalAlpha = 1;
      }
      c.classList.toggle("selected", state.layer === l && state.head === h);
    }
  }

  // ------------------------------------------------------- head roles
  const REL_NAMES = { previous: "previous note", onset: "same onset", pitch: "same pitch", pitch_class: "same pitch class",
                      bar_back: "one bar back", position: "same place in bar", structure: "structure tokens" };
  function buildRoles() {
    const R = D.roles.relations, head = $("roletable").tHead, body = $("roletable").tBodies[0];
    const hr = head.insertRow();
    for (const h of ["layer", "head", "role", "share", "lift"]) hr.appendChild(el("th", h));
    for (const r of R) hr.appendChild(el("th", REL_NAMES[r] + " lift"));
    for (const t of D.roles.table) {
      const tr = body.insertRow();
      tr.dataset.layer = t.layer - 1; tr.dataset.head = t.head - 1;
      for (const v of [t.layer, t.head]) tr.appendChild(el("td", String(v)));
      tr.appendChild(el("td", REL_NAMES[t.relation], "name"));
      tr.appendChild(el("td", Math.round(100 * t.share) + "%"));
      tr.appendChild(el("td", fmt(t.lift, 1) + "\u00d7"));
      for (let r = 0; r < R.length; r++) {
        const lift = D.roles.lift[((t.layer - 1) * D.heads + (t.head - 1)) * R.length + r];
        const td = el("td", lift === null ? "–" : fmt(lift, 1));
        if (lift !== null && lift > 1) td.style.background = "rgba(47,91,211," + Math.min(0.45, (lift - 1) / 10).toFixed(2) + ")";
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => pickHead(t.layer - 1, t.head - 1));
    }
  }
  function markRoleRow() {
    for (const tr of $("roletable").tBodies[0].rows) {
      tr.classList.toggle("selected", Number(tr.dataset.layer) === state.layer && Number(tr.dataset.head) === state.head);
    }
  }

  // ------------------------------------------------------------ heatmap
  // The canvas has P <= 640 pixels a side; a pixel shows the largest weight of the tokens it covers,
  // relative to its row's strongest weight (but at least HEAT_FLOOR), on a square-root scale.
  const P = Math.min(T, 640), HEAT_FLOOR = 0.05;
  const cell = (t) => Math.floor(t * P / T);
  let heatBase = null;
  function heatView() { return state.layer === ROLLOUT ? [D.layers - 1, D.heads] : [state.layer, state.head]; }
  function drawHeatmap() {
    const c = $("heatmap");
    if (!TOKENS || !T) return;
    if (c.width !== P) { c.width = P; c.height = P; }
    const ctx = c.getContext("2d"), img = ctx.createImageData(P, P), px = img.data, top = new Float32Array(P * P);
    const [l, h] = heatView();
    for (let t = 0; t < T; t++) {
      const y = cell(t), entries = row(TOKENS, l, h, t);
      const scale = Math.max(entries.length ? entries[0][1] : 1, HEAT_FLOOR);
      for (const [s, w] of entries) {
        const o = y * P + cell(s);
        if (w / scale > top[o]) top[o] = w / scale;
      }
    }
    for (let y = 0; y < P; y++) {
      for (let x = 0; x < P; x++) {
        const o = 4 * (y * P + x), v = Math.sqrt(top[y * P + x]), bg = x > y ? 243 : 255;
        px[o] = bg - (bg - 30) * v; px[o + 1] = bg - (bg - 85) * v; px[o + 2] = bg - (bg - 210) * v; px[o + 3] = 255;
      }
    }
    heatBase = img;
    ctx.putImageData(img, 0, 0);
  }
  function markSelectedTokens() {
    if (!TOKENS || !heatBase) return;
    const ctx = $("heatmap").getContext("2d"), i = focus();
    ctx.putImageData(heatBase, 0, 0);
    if (i === null) return;
    ctx.fillStyle = "rgba(255, 184, 0, 0.35)";
    for (let t = 0; t < T; t++) if (D.tokens.note[t] === i) ctx.fillRect(0, cell(t), P, 1);
  }
  function tokenLabel(t) {
    const n = D.tokens.note[t];
    return "#" + t + " " + D.tokens.text[t] + (n >= 0 ? " (" + noteLabel(n) + ")" : "");
  }
  function wireHeatmap() {
    const c = $("heatmap");
    c.addEventListener("mousemove", (ev) => {
      const b = c.getBoundingClientRect();
      const t = Math.floor((ev.clientY - b.top) / b.height * T), s = Math.floor((ev.clientX - b.left) / b.width * T);
      if (t < 0 || s < 0 || t >= T || s >= T) return;
      const [l, h] = heatView();
      const hit = row(TOKENS, l, h, t).find((e) => e[0] === s);
      $("heatinfo").textContent = "query " + tokenLabel(t) + "\nkey   " + tokenLabel(s) +
        "\nweight " + (hit ? fmt(hit[1], 3) : "< 0.002 (not stored)") +
        "\nNLL of query token " + fmt(D.tokens.nll[t], 2) + " nats";
    });
  }

  // ------------------------------------------------------------ playback
  // Notes are scheduled a little ahead of the audio clock (LOOKAHEAD s), so a long piece does not
  // create thousands of oscillators at once.  The tone: a triangle and a quieter sine an octave up,
  // through a low-pass filter, with a short attack, a decay to a sustain level and a soft release.
  const LOOKAHEAD = 0.6;
  let audio = null, playing = null;
  function togglePlay() {
    if (playing) { stopPlay(); return; }
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx || !N) { $("info").textContent = "Web Audio is not available in this browser."; return; }
    audio = audio || new Ctx();
    if (audio.state === "suspended" && audio.resume) audio.resume();
    const from = state.selected !== null ? NOTE.start[state.selected] : NOTE.start[BY_START[0]];
    playing = { t0: audio.currentTime + 0.15 - from, next: firstStartingAfter(from - 1e-9), voices: [], current: new Set() };
    $("play").textContent = "\u25A0 Stop";
    requestAnimationFrame(tick);
  }
  function voice(i) {
    const a = playing.t0 + NOTE.start[i], b = Math.max(a + 0.08, playing.t0 + NOTE.end[i]);
    const peak = 0.05 + 0.12 * D.notes.velocity[i] / 127, f = 440 * Math.pow(2, (D.notes.pitch[i] - 69) / 12);
    const gain = audio.createGain(), filter = audio.createBiquadFilter();
    filter.type = "lowpass";
    filter.frequency.value = Math.min(6000, f * 6);
    gain.gain.setValueAtTime(0, a);
    gain.gain.linearRampToValueAtTime(peak, a + 0.01);
    gain.gain.setTargetAtTime(peak * 0.55, a + 0.01, 0.12);
    gain.gain.setTargetAtTime(0, b, 0.08);
    filter.connect(gain).connect(audio.destination);
    const oscs = [["triangle", f, 1], ["sine", 2 * f, 0.25]].map(([type, freq, level]) => {
      const o = audio.createOscillator(), g = audio.createGain();
      o.type = type; o.frequency.value = freq; g.gain.value = level;
      o.connect(g).connect(filter);
      o.start(a); o.stop(b + 0.5);
      return o;
    });
    playing.voices.push(...oscs);
  }
  function tick() {
    if (!playing) return;
    const now = audio.currentTime - playing.t0;
    while (playing.next < N && NOTE.start[BY_START[playing.next]] < now + LOOKAHEAD) voice(BY_START[playing.next++]);
    playing.voices = playing.voices.slice(-400);
    const on = new Set();
    let lead = null;
    for (let k = Math.max(0, firstStartingAfter(now - MAX_LEN)); k < N && NOTE.start[BY_START[k]] <= now; k++) {
      const i = BY_START[k];
      if (now < NOTE.end[i]) {
        on.add(i);
        if (lead === null || NOTE.start[i] > NOTE.start[lead] || (NOTE.start[i] === NOTE.start[lead] && D.notes.pitch[i] > D.notes.pitch[lead])) lead = i;
      }
    }
    for (const i of playing.current) if (!on.has(i) && rendered.get(i)) rendered.get(i).classList.remove("playing");
    for (const i of on) if (rendered.get(i)) rendered.get(i).classList.add("playing");
    playing.current = on;
    $("roll").dataset.playing = on.size ? Array.from(on).join(",") : "";
    if (lead !== null && lead !== state.play) {
      state.play = lead;
      followPlayback(lead);
      if (state.hover === null && state.selected === null) refresh(); else drawArcs(lead);
    }
    if (now > G.end + 0.5) stopPlay(); else requestAnimationFrame(tick);
  }
  function followPlayback(i) {
    const wrap = $("rollwrap"), x = nx(NOTE.start[i]);
    if (x < wrap.scrollLeft + 40 || x > wrap.scrollLeft + wrap.clientWidth - 80) { wrap.scrollLeft = x - 80; drawView(false); }
  }
  function stopPlay() {
    if (!playing) return;
    for (const v of playing.voices) { try { v.stop(); } catch (e) { /* already stopped */ } }
    for (const i of playing.current) if (rendered.get(i)) rendered.get(i).classList.remove("playing");
    playing = null;
    state.play = null;
    $("roll").dataset.playing = "";
    $("play").textContent = "\u25B6 Play";
    refresh();
  }

  // ------------------------------------------------------------ saving
  // The view as it is on screen (the visible stretch of the roll, its keyboard labels, the arcs)
  // becomes one standalone SVG; the PNG is that SVG painted on a canvas at twice the size.
  function viewSvg() {
    const wrap = $("rollwrap"), x0 = wrap.scrollLeft, w = Math.min(wrap.clientWidth, width() - x0), k = G.keysW;
    const legend = viewLegend(x0 - k + 8, w + k - 16), h = G.height + legend.height;
    const out = svg("svg", { xmlns: SVGNS, width: w + k, height: h, viewBox: (x0 - k) + " 0 " + (w + k) + " " + h });
    out.appendChild(svg("style", {})).textContent = "rect.note.selected { stroke: #2f5bd3; stroke-width: 2.2; }";
    out.appendChild(svg("rect", { x: x0 - k, y: 0, width: w + k, height: h, fill: "#ffffff" }));
    out.appendChild(legend.g);
    const roll = svg("g", { transform: "translate(0," + legend.height + ")" });
    for (const id of ["grid", "notes", "arcs", "marks"]) {
      const g = $(id).cloneNode(true);
      g.removeAttribute("id");
      roll.appendChild(g);
    }
    const keys = $("keys").cloneNode(true);
    keys.removeAttribute("id");
    const kg = svg("g", { transform: "translate(" + (x0 - k) + ",0)" });
    kg.appendChild(svg("rect", { x: 0, y: 0, width: k, height: G.height, fill: "#ffffff" }));
    while (keys.firstChild) kg.appendChild(keys.firstChild);
    roll.appendChild(kg);
    out.appendChild(roll);
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(out);
  }
  /** The saved view's legend, above the roll: the piece, the layer and head, the note in focus,
   *  and the colours (each track's "N · name", or the surprise ramp).  Returns { g, height }. */
  function viewLegend(x, w) {
    const g = svg("g", { class: "legend", "font-family": "sans-serif", "font-size": 12, fill: "#1f2430" });
    const text = (tx, ty, s, attrs) => {
      const t = svg("text", Object.assign({ x: tx, y: ty }, attrs || {}));
      t.textContent = s;
      g.appendChild(t);
      return t;
    };
    const i = focus();
    text(x, 17, D.title + " · " + viewLabel(), { "font-size": 13, "font-weight": 600, class: "view" });
    text(x, 35, i === null ? "no note selected"
      : "selected: " + noteLabel(i) + (barBeat(i) ? " · " + barBeat(i) : "") +
        (M.trackNames.length > 1 ? " · " + M.trackNames[D.notes.track[i]] : ""), { class: "selected-note" });
    let cx = x, cy = 53;
    if (state.colour === "track") {
      M.trackNames.forEach((name, t) => {
        const span = 18 + 7 * name.length;
        if (cx > x && cx + span > x + w) { cx = x; cy += 18; }
        g.appendChild(svg("rect", { x: cx, y: cy - 10, width: 11, height: 11, rx: 2, class: "swatch",
                                    fill: TRACK_COLOURS[t % TRACK_COLOURS.length] }));
        text(cx + 15, cy, name, { class: "track" });
        cx += span + 12;
      });
    } else {
      text(cx, cy, "colour: surprise " + fmt(SURPRISE.lo, 1) + " – " + fmt(SURPRISE.hi, 1) + " nats", { class: "surprise" });
      [0, 0.33, 0.66, 1].forEach((u, k) => g.appendChild(svg("rect", {
        x: cx + 250 + 28 * k, y: cy - 10, width: 28, height: 11,
        fill: surpriseColour(SURPRISE.lo + u * (SURPRISE.hi - SURPRISE.lo)) })));
    }
    return { g: g, height: cy + 12 };
  }
  function fileStem() { return (D.title || "melody").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") + "_view"; }
  function download(href, name) {
    const a = document.createElement("a");
    a.href = href; a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }
  function saveSvg() {
    const url = URL.createObjectURL(new Blob([viewSvg()], { type: "image/svg+xml" }));
    download(url, fileStem() + ".svg");
    setTimeout(() => URL.revokeObjectURL(url), 4000);
  }
  function savePng() {
    const text = viewSvg(), img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width * 2; c.height = img.height * 2;
      const ctx = c.getContext("2d");
      ctx.scale(2, 2);
      ctx.drawImage(img, 0, 0);
      download(c.toDataURL("image/png"), fileStem() + ".png");
    };
    img.src = "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(text)));
  }

  /** Sections scrolled to (a #heads link, find in page) stop below the sticky control bar. */
  function stickyMargin() {
    document.documentElement.style.setProperty("--bar-height", ($("bar").offsetHeight + 8) + "px");
  }

  // ---------------------------------------------------------------- start
  function main() {
    fillHeader();
    fillPickers();
    drawLegend();
    drawKeys();
    buildHeadGrid();
    buildRoles();
    wireRoll();
    wireHeatmap();
    $("layer").addEventListener("change", () => {
      state.layer = $("layer").value === ROLLOUT ? ROLLOUT : Number($("layer").value);
      changeView();
    });
    $("head").addEventListener("change", () => { state.head = Number($("head").value); changeView(); });
    $("topk").addEventListener("input", () => { state.topk = Number($("topk").value); $("topk-value").textContent = state.topk; refresh(); });
    $("colour").addEventListener("change", () => { state.colour = $("colour").value; drawLegend(); drawNotes(); markSelected(); });
    $("zoom-in").addEventListener("click", () => zoom(1.25));
    $("zoom-out").addEventListener("click", () => zoom(0.8));
    $("play").addEventListener("click", togglePlay);
    $("save-svg").addEventListener("click", saveSvg);
    $("save-png").addEventListener("click", savePng);
    $("roll").dataset.pxs = G.pxs.toFixed(3);
    drawHeatmap();
    markRoleRow();
    drawView(true);
    stickyMargin();
    window.addEventListener("resize", stickyMargin);
    document.body.dataset.ready = "1";
  }
  main();
})();
