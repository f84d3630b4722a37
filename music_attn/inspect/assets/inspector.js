/* music_attn attention inspector: draws the piano roll, attention arcs, token heatmap and playback.
 * Reads its data from the JSON script element with id "data". Every text that comes from the
 * MIDI file is inserted with textContent, never as HTML. */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const N = D.notes.pitch.length, T = D.tokens.text.length;
  const $ = (id) => document.getElementById(id);
  const state = { layer: D.layers - 1, head: D.heads, selected: null, hover: null };

  // ---------------------------------------------------------------- data
  function bytes(b64) {
    const s = atob(b64), u = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return u;
  }
  function sparse(m) {
    const counts = bytes(m.counts), raw = bytes(m.index);
    const index = m.indexBytes === 4 ? new Uint32Array(raw.buffer) : new Uint16Array(raw.buffer);
    const offs = new Uint32Array(counts.length + 1);
    for (let r = 0; r < counts.length; r++) offs[r + 1] = offs[r] + counts[r];
    return { rows: m.rows, heads: m.heads, offs: offs, index: index, value: bytes(m.value) };
  }
  const NOTES = sparse(D.noteMaps), TOKENS = sparse(D.tokenMaps), STRUCT = bytes(D.structure);

  /** Entries [key, weight] of one attention row, strongest first. */
  function row(S, layer, head, i) {
    const r = (layer * S.heads + head) * S.rows + i, out = [];
    for (let e = S.offs[r]; e < S.offs[r + 1]; e++) out.push([S.index[e], S.value[e] / 255]);
    return out;
  }
  function structureShare(i) { return STRUCT[(state.layer * (D.heads + 1) + state.head) * N + i] / 255; }
  function headLabel() { return state.head === D.heads ? "mean of heads" : "head " + (state.head + 1); }
  function noteLabel(i) { return D.notes.name[i] + " #" + (i + 1); }
  function fmt(x, d) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }

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
  function fillHeader() {
    $("title").textContent = D.title;
    document.title = "music_attn: " + D.title;
    if (D.tracks.length) $("tracks").textContent = "Tracks: " + D.tracks.join(" · ");
    if (D.lyrics) $("lyrics").textContent = "Lyrics: " + D.lyrics;
    const win = D.window ? "The model sees " + D.window + " tokens at a time. " : "";
    $("notice").textContent = (D.notice || "") + (D.notice ? "" : win.trim());
    $("token-caption").textContent = T + " tokens, " + N + " notes; row = query token, column = key token";
  }
  function fillPickers() {
    for (let l = 0; l < D.layers; l++) $("layer").appendChild(new Option("layer " + (l + 1), l));
    for (let h = 0; h < D.heads; h++) $("head").appendChild(new Option("head " + (h + 1), h));
    $("head").appendChild(new Option("mean of heads", D.heads));
    $("layer").value = state.layer;
    $("head").value = state.head;
  }

  // ---------------------------------------------------------- piano roll
  const G = layout();
  function layout() {
    const end = N ? Math.max.apply(null, D.notes.end) : 1;
    const lo = N ? Math.min.apply(null, D.notes.pitch) - 2 : 58, hi = N ? Math.max.apply(null, D.notes.pitch) + 2 : 62;
    const pxs = Math.max(60, 1100 / Math.max(end, 1e-3)), rowH = 11, top = 80, left = 34;
    return { end: end, lo: lo, hi: hi, pxs: pxs, rowH: rowH, top: top, left: left,
             width: left + end * pxs + 20, height: top + (hi - lo + 1) * rowH + 22 };
  }
  function nx(t) { return G.left + t * G.pxs; }
  function ny(p) { return G.top + (G.hi - p) * G.rowH; }
  function centre(i) { return [nx((D.notes.start[i] + D.notes.end[i]) / 2), ny(D.notes.pitch[i])]; }

  // Surprise colour: from the 5th to the 95th percentile of the melody's note surprise.
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
    const c = stops[k].map((v, j) => Math.round(v + f * (stops[k + 1][j] - v)));
    return "rgb(" + c.join(",") + ")";
  }

  function drawGrid() {
    const g = $("grid");
    for (let p = G.lo; p <= G.hi; p++) {
      const y = ny(p) + G.rowH, c = p % 12 === 0;
      g.appendChild(svg("line", { x1: G.left, x2: G.width, y1: y, y2: y, class: c ? "c" : "" }));
      if (c) g.appendChild(svg("text", { x: 2, y: y - 2 })).textContent = "C" + (p / 12 - 1);
    }
    const step = G.end > 60 ? 10 : G.end > 20 ? 5 : 1;
    for (let t = 0; t <= G.end; t += step) {
      g.appendChild(svg("line", { x1: nx(t), x2: nx(t), y1: G.top - 4, y2: G.height - 18 }));
      g.appendChild(svg("text", { x: nx(t) + 2, y: G.height - 6 })).textContent = t + " s";
    }
  }
  function drawNotes() {
    const roll = $("roll"), g = $("notes");
    roll.setAttribute("width", G.width);
    roll.setAttribute("height", G.height);
    for (let i = 0; i < N; i++) {
      const w = Math.max(2, (D.notes.end[i] - D.notes.start[i]) * G.pxs - 1);
      const r = svg("rect", { x: nx(D.notes.start[i]), y: ny(D.notes.pitch[i]), width: w, height: G.rowH - 1,
                              rx: 2, class: "note", fill: surpriseColour(D.notes.surprise[i]), "data-i": i });
      g.appendChild(r);
    }
    $("legend-max").textContent = fmt(SURPRISE.lo, 1) + " – " + fmt(SURPRISE.hi, 1) + " nats";
  }
  const rects = () => $("notes").children;

  // ---------------------------------------------------------------- arcs
  // Arcs: the MAX_ARCS strongest keys of the row; width and opacity grow with the weight,
  // relative to the row's strongest entry but never to less than ARC_FLOOR (diffuse rows stay thin).
  const MAX_ARCS = 16, ARC_FLOOR = 0.3;
  function drawArcs(i) {
    const g = $("arcs");
    while (g.firstChild) g.removeChild(g.firstChild);
    if (i === null) return;
    const entries = row(NOTES, state.layer, state.head, i).slice(0, MAX_ARCS);
    const scale = Math.max(entries.length ? entries[0][1] : 1, ARC_FLOOR);
    for (const [j, w] of entries) g.appendChild(j === i ? selfRing(i, w / scale) : arc(i, j, w / scale, w));
  }
  function arc(i, j, rel, w) {
    const [x1, y1] = centre(i), [x2, y2] = centre(j);
    const h = 18 + Math.abs(x1 - x2) * 0.35, ytop = Math.max(4, Math.min(y1, y2) - h);
    const p = svg("path", { d: "M" + x1 + "," + y1 + " Q" + (x1 + x2) / 2 + "," + ytop + " " + x2 + "," + y2,
                            class: "arc", "stroke-width": (0.75 + 6 * rel).toFixed(2),
                            "stroke-opacity": (0.15 + 0.85 * rel).toFixed(2), "data-j": j, "data-w": w.toFixed(3) });
    return p;
  }
  function selfRing(i, rel) {
    const [x, y] = centre(i);
    return svg("circle", { cx: x, cy: y, r: 5 + 5 * rel, class: "self", "stroke-width": (0.75 + 3 * rel).toFixed(2),
                           "stroke-opacity": (0.15 + 0.85 * rel).toFixed(2), "data-j": i });
  }

  function topAttended(i, k) {
    return row(NOTES, state.layer, state.head, i).filter((e) => e[0] !== i).slice(0, k);
  }
  function describe(i) {
    const lines = [noteLabel(i) + " (MIDI " + D.notes.pitch[i] + ")",
      "onset " + fmt(D.notes.start[i], 2) + " s · duration " + fmt(D.notes.end[i] - D.notes.start[i], 2) + " s",
      "surprise " + fmt(D.notes.surprise[i], 2) + " nats"];
    const top = topAttended(i, 3).map((e) => noteLabel(e[0]) + " " + fmt(e[1], 2));
    lines.push("layer " + (state.layer + 1) + ", " + headLabel() + ": " + (top.length ? top.join(", ") : "no earlier note"));
    lines.push("structure tokens " + Math.round(100 * structureShare(i)) + "%");
    return lines;
  }
  function showInfo() {
    const box = $("info"), i = state.hover !== null ? state.hover : state.selected;
    while (box.firstChild) box.removeChild(box.firstChild);
    if (i === null) { box.appendChild(el("div", "No note selected.", "top")); return; }
    const lines = describe(i);
    box.appendChild(el("div", lines.slice(0, 3).join(" · ")));
    box.appendChild(el("div", "attends to " + lines.slice(3).join(" · "), "top"));
  }
  function showTooltip(i, ev) {
    const tip = $("tooltip");
    while (tip.firstChild) tip.removeChild(tip.firstChild);
    for (const line of describe(i)) tip.appendChild(el("div", line));
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 330) + "px";
    tip.style.top = ev.clientY + 14 + "px";
  }

  function refresh() {
    const i = state.hover !== null ? state.hover : state.selected;
    drawArcs(i);
    showInfo();
    for (const r of rects()) r.classList.toggle("selected", Number(r.dataset.i) === state.selected);
    drawHeatmap();
  }
  function select(i) {
    state.selected = i;
    refresh();
  }
  function wireRoll() {
    const g = $("notes");
    g.addEventListener("click", (ev) => { const i = noteOf(ev); if (i !== null) select(i === state.selected ? null : i); });
    g.addEventListener("mouseover", (ev) => { const i = noteOf(ev); if (i !== null) { state.hover = i; refresh(); showTooltip(i, ev); } });
    g.addEventListener("mousemove", (ev) => { const i = noteOf(ev); if (i !== null) showTooltip(i, ev); });
    g.addEventListener("mouseout", () => { state.hover = null; $("tooltip").hidden = true; refresh(); });
    document.addEventListener("keydown", (ev) => {
      if (ev.target.tagName === "SELECT" || !N) return;
      const cur = state.selected === null ? -1 : state.selected;
      if (ev.key === "ArrowRight") select(Math.min(N - 1, cur + 1));
      if (ev.key === "ArrowLeft") select(Math.max(0, cur - 1));
    });
  }
  function noteOf(ev) {
    const t = ev.target;
    return t && t.classList && t.classList.contains("note") ? Number(t.dataset.i) : null;
  }

  // ------------------------------------------------------------ heatmap
  // The canvas has P <= 640 pixels a side; a pixel shows the largest weight of the tokens it covers,
  // relative to its row's strongest weight (but at least HEAT_FLOOR), on a square-root scale.
  const P = Math.min(T, 640), HEAT_FLOOR = 0.05;
  const cell = (t) => Math.floor(t * P / T);
  function drawHeatmap() {
    const c = $("heatmap");
    if (!T) return;
    if (c.width !== P) { c.width = P; c.height = P; }
    const ctx = c.getContext("2d"), img = ctx.createImageData(P, P), px = img.data, top = new Float32Array(P * P);
    for (let t = 0; t < T; t++) {
      const y = cell(t);
      const entries = row(TOKENS, state.layer, state.head, t);
      const scale = Math.max(entries.length ? entries[0][1] : 1, HEAT_FLOOR);    // the row's strongest
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
    ctx.putImageData(img, 0, 0);
    markSelectedTokens(ctx);
  }
  function markSelectedTokens(ctx) {
    const i = state.hover !== null ? state.hover : state.selected;
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
      const hit = row(TOKENS, state.layer, state.head, t).find((e) => e[0] === s);
      $("heatinfo").textContent = "query " + tokenLabel(t) + "\nkey   " + tokenLabel(s) +
        "\nweight " + (hit ? fmt(hit[1], 3) : "< 0.002 (not stored)") +
        "\nNLL of query token " + fmt(D.tokens.nll[t], 2) + " nats";
    });
  }

  // ------------------------------------------------------------ playback
  let audio = null, playing = null;
  function togglePlay() {
    if (playing) { stopPlay(); return; }
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx || !N) { $("info").textContent = "Web Audio is not available in this browser."; return; }
    audio = audio || new Ctx();
    if (audio.state === "suspended") audio.resume();
    const t0 = audio.currentTime + 0.15, first = Math.min.apply(null, D.notes.start);
    const voices = [];
    for (let i = 0; i < N; i++) voices.push(voice(i, t0 - first));
    playing = { t0: t0 - first, voices: voices, current: new Set() };
    $("play").textContent = "\u25A0 Stop";
    requestAnimationFrame(tick);
  }
  function voice(i, t0) {
    const osc = audio.createOscillator(), gain = audio.createGain();
    const a = t0 + D.notes.start[i], b = Math.max(a + 0.05, t0 + D.notes.end[i]);
    const peak = 0.04 + 0.16 * D.notes.velocity[i] / 127;
    osc.type = "triangle";
    osc.frequency.value = 440 * Math.pow(2, (D.notes.pitch[i] - 69) / 12);
    gain.gain.setValueAtTime(0, a);
    gain.gain.linearRampToValueAtTime(peak, a + 0.012);
    gain.gain.setTargetAtTime(0, b - 0.03, 0.03);
    osc.connect(gain).connect(audio.destination);
    osc.start(a);
    osc.stop(b + 0.25);
    return osc;
  }
  function tick() {
    if (!playing) return;
    const now = audio.currentTime - playing.t0, on = new Set();
    for (let i = 0; i < N; i++) if (D.notes.start[i] <= now && now < D.notes.end[i]) on.add(i);
    const rs = rects();
    for (const i of playing.current) if (!on.has(i)) rs[i].classList.remove("playing");
    for (const i of on) if (!playing.current.has(i)) { rs[i].classList.add("playing"); follow(i); }
    playing.current = on;
    $("roll").dataset.playing = on.size ? Array.from(on).join(",") : "";
    if (now > G.end + 0.3) stopPlay(); else requestAnimationFrame(tick);
  }
  function follow(i) {
    const wrap = $("rollwrap"), x = nx(D.notes.start[i]);
    if (x < wrap.scrollLeft + 40 || x > wrap.scrollLeft + wrap.clientWidth - 80) wrap.scrollLeft = x - 80;
  }
  function stopPlay() {
    if (!playing) return;
    for (const v of playing.voices) { try { v.stop(); } catch (e) { /* already stopped */ } }
    for (const i of playing.current) rects()[i].classList.remove("playing");
    playing = null;
    $("roll").dataset.playing = "";
    $("play").textContent = "\u25B6 Play";
  }

  // ---------------------------------------------------------------- start
  function main() {
    fillHeader();
    fillPickers();
    drawGrid();
    drawNotes();
    wireRoll();
    wireHeatmap();
    $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); refresh(); });
    $("head").addEventListener("change", () => { state.head = Number($("head").value); refresh(); });
    $("play").addEventListener("click", togglePlay);
    refresh();
    document.body.dataset.ready = "1";
  }
  main();
})();
