// The inspector beside the canvas: every query (thumbnails), one query in detail, the pixel
// probe, the semantic and instance views. Runs in gr.HTML's js_on_load; its requests go through
// the canvas (window.mfs.send), its answers arrive as this component's value.

const panes = element.querySelectorAll(".mfs-pane");
const tabs = element.querySelectorAll(".mfs-tabs button");
const sprites = new Map();  // key -> data URL of the thumbnail sheet
const greys = new Map();  // key -> decoded probability map
let last = null;
let viewsFor = null;
let resentFor = null;

function mfs() { return window.mfs; }
function escI(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function show(tab) {
  tabs.forEach((b) => b.classList.toggle("on", b.dataset.tab === tab));
  panes.forEach((p) => { p.hidden = p.dataset.pane !== tab; });
  if (tab === "views" && last && last.image_id != null && viewsFor !== last.image_id && mfs()) {
    viewsFor = last.image_id;
    element.querySelector("#views").innerHTML = '<p class="mfs-dim">computing…</p>';
    mfs().send("show_views", {}, false);
  }
}
tabs.forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));

function renderGallery(gal) {
  const grid = element.querySelector("#query-gallery");
  if (!gal || !gal.items) { grid.innerHTML = ""; return; }
  const sp = gal.sprite || {};
  if (sp.data) sprites.set(sp.key, sp.data);
  const url = sprites.get(sp.key);
  if (sp.key && !url && mfs()) { mfs().send("resend_inspector", {}, false); return; }
  const only = element.querySelector(".mfs-dropped").checked;
  grid.innerHTML = gal.items.filter((it) => !only || it.reason).map((it) => {
    const r = Math.floor(it.q / sp.cols), c = it.q % sp.cols;
    const fate = it.reason ? `dropped: ${it.reason}` : it.seg != null ? `segment ${it.seg}` : "";
    return `<div class="mfs-tile${it.reason ? " dropped" : ""}" data-q="${it.q}" title="q${it.q} ${escI(it.cls)} ${it.score} · ${fate}">` +
      `<div class="mfs-thumb" style="width:${sp.tw}px;height:${sp.th}px;background-image:url(${url});background-position:-${c * sp.tw}px -${r * sp.th}px"></div>` +
      `<div class="mfs-cap">q${it.q} ${escI(it.cls)} ${it.score.toFixed(2)}</div><div class="mfs-fate">${fate}</div></div>`;
  }).join("");
}
element.querySelector(".mfs-dropped").addEventListener("change", () => renderGallery(last && last.gallery));
element.querySelector("#query-gallery").addEventListener("click", (e) => {
  const t = e.target.closest(".mfs-tile");
  if (t && mfs()) { mfs().send("show_query", { query: +t.dataset.q }, false); }
});

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(t) {
  const x = Math.min(0.9999, Math.max(0, t)) * 4, i = Math.floor(x), f = x - i;
  return VIRIDIS[i].map((a, k) => a + (VIRIDIS[i + 1][k] - a) * f);
}

async function grey(ref) {
  if (!ref || !ref.key) return null;
  if (ref.data) {
    const blob = await (await fetch(ref.data)).blob();
    greys.set(ref.key, await createImageBitmap(blob, { colorSpaceConversion: "none" }));
  }
  return greys.get(ref.key) || null;
}

async function renderDetail(d) {
  const box = element.querySelector("#query-detail");
  if (!d) return;
  const heat = await grey(d.heat);
  const photo = mfs() && mfs().assets.get(d.image);
  const bars = d.top5.map(([n, p]) =>
    `<div class="mfs-bar"><span>${escI(n)}</span><i style="width:${Math.round(p * 100)}%"></i><b>${p.toFixed(3)}</b></div>`).join("");
  const buttons = (d.accept ? `<button class="mfs-accept" id="accept-query" data-q="${d.q}">Accept as segment</button>` : "") +
    (d.seg != null ? `<button class="mfs-goto" data-seg="${d.seg}">Select segment ${d.seg}</button>` : "");
  box.innerHTML = `<div class="mfs-qhead" id="query-info">query ${d.q}: mask area ${d.area} px; ${escI(d.text)}</div>` +
    `<canvas class="mfs-heat"></canvas><div class="mfs-bars">${bars}</div><div class="mfs-qbtns">${buttons}</div>`;
  box.closest(".mfs-pane").scrollTop = 0;
  const c = box.querySelector(".mfs-heat");
  if (!heat) {  // the answer that carried it was merged into a later one: ask again, once
    if (mfs() && resentFor !== d.heat.key) { resentFor = d.heat.key; mfs().send("resend_inspector", {}, false); }
    return;
  }
  const w = Math.min(box.clientWidth || 360, 360), h = Math.round(w * heat.height / heat.width);
  c.width = w; c.height = h;
  const cx = c.getContext("2d", { willReadFrequently: true });
  cx.drawImage(heat, 0, 0, w, h);
  const px = cx.getImageData(0, 0, w, h);
  if (photo) cx.drawImage(photo, 0, 0, w, h); else cx.clearRect(0, 0, w, h);
  const under = cx.getImageData(0, 0, w, h);
  for (let i = 0; i < w * h; i++) {
    const [r, g2, b] = viridis(px.data[4 * i] / 255);
    const gr = (under.data[4 * i] + under.data[4 * i + 1] + under.data[4 * i + 2]) / 3;
    under.data[4 * i] = 0.4 * gr + 0.6 * r; under.data[4 * i + 1] = 0.4 * gr + 0.6 * g2;
    under.data[4 * i + 2] = 0.4 * gr + 0.6 * b; under.data[4 * i + 3] = 255;
  }
  cx.putImageData(under, 0, 0);
}
element.querySelector("#query-detail").addEventListener("click", (e) => {
  const a = e.target.closest(".mfs-accept"), s = e.target.closest(".mfs-goto");
  if (a && mfs()) mfs().send("accept_query", { query: +a.dataset.q });
  if (s && mfs()) mfs().setSelected(+s.dataset.seg, false);
});

function renderProbe(p) {
  if (!p) return;
  element.querySelector("#probe-info").textContent = p.text;
  element.querySelector("#probe-table tbody").innerHTML = p.rows.map((r) =>
    `<tr data-q="${r[0]}"><td>q${r[0]}</td><td>${r[1]}</td><td>${escI(r[2])}</td><td>${r[3]}</td><td>${r[4]}</td></tr>`).join("");
}
element.querySelector("#probe-table").addEventListener("click", (e) => {
  const r = e.target.closest("tr[data-q]");
  if (r && mfs()) mfs().send("show_query", { query: +r.dataset.q }, false);
});

async function renderViews(v) {
  const box = element.querySelector("#views");
  if (!v) return;
  const photo = mfs() && last && mfs().assets.get(`img${last.image_id}`);
  const blob = await (await fetch(v.semantic.data)).blob();
  const sem = await createImageBitmap(blob, { colorSpaceConversion: "none" });
  const w = Math.min(box.clientWidth || 360, 360), h = Math.round(w * sem.height / sem.width);
  const legend = v.semantic.classes.map((c) => `<span class="mfs-class"><i style="background:${c.color}"></i>${escI(c.name)}</span>`).join("");
  box.innerHTML = `<div class="mfs-vlabel">Semantic</div><canvas class="mfs-sem"></canvas><div>${legend}</div>` +
    `<div class="mfs-vlabel">Instances above the score threshold (${v.instances.count})</div><img class="mfs-inst" src="${v.instances.data}">`;
  const c = box.querySelector(".mfs-sem");
  c.width = sem.width; c.height = sem.height; c.style.width = w + "px"; c.style.height = h + "px";
  const cx = c.getContext("2d", { willReadFrequently: true });
  cx.drawImage(sem, 0, 0);
  const idx = cx.getImageData(0, 0, sem.width, sem.height);
  if (photo) cx.drawImage(photo, 0, 0, sem.width, sem.height);
  const out = cx.getImageData(0, 0, sem.width, sem.height);
  const cols = v.semantic.classes.map((k) => [parseInt(k.color.slice(1, 3), 16), parseInt(k.color.slice(3, 5), 16), parseInt(k.color.slice(5, 7), 16)]);
  for (let i = 0; i < sem.width * sem.height; i++) {
    const k = v.semantic.mode === "RGB" ? idx.data[4 * i] | (idx.data[4 * i + 1] << 8) : idx.data[4 * i];
    const col = cols[k - 1];
    if (!col) continue;
    for (let j = 0; j < 3; j++) out.data[4 * i + j] = 0.5 * out.data[4 * i + j] + 0.5 * col[j];
    out.data[4 * i + 3] = 255;
  }
  cx.putImageData(out, 0, 0);
}

let queue = Promise.resolve();
async function applyInspector(v) {
  if (v.image_id !== (last && last.image_id)) {
    viewsFor = null;
    element.querySelector("#query-detail").innerHTML = '<p class="mfs-dim">Click a segment, a thumbnail or a probe row.</p>';
    element.querySelector("#probe-info").textContent = "Alt+click the canvas (or use the Probe tool) to see which queries claim a pixel.";
    element.querySelector("#probe-table tbody").innerHTML = "";
    element.querySelector("#views").innerHTML = '<p class="mfs-dim">The semantic and instance views of the open image.</p>';
  }
  last = v;
  if (v.gallery) renderGallery(v.gallery);
  if (v.query) await renderDetail(v.query);
  if (v.probe) renderProbe(v.probe);
  if (v.views) await renderViews(v.views);
  if (v.tab) show(v.tab);
  const box = element.querySelector(".mfs-insp");
  box.dataset.image = v.image_id == null ? "" : String(v.image_id);
  box.dataset.thumbs = v.gallery && v.gallery.sprite ? "1" : "";
  box.dataset.revision = String((+box.dataset.revision || 0) + 1);
}

function receiveInspector() {
  const v = props.value;
  if (!v || typeof v !== "object" || v.op !== undefined) return;
  queue = queue.then(() => applyInspector(v)).catch((err) => console.error("inspector:", err));
}
watch("value", receiveInspector);
receiveInspector();
