// The Annotate canvas, part 1: client state, pictures, overlay and drawing.
// Runs inside gr.HTML's js_on_load (element, trigger, props, watch are given); the parts are
// concatenated by app/annotate_web.py into one function body, so they share this scope.

const root = element.querySelector(".mfs-annot");
const cv = element.querySelector("#annotate-canvas");
const stage = element.querySelector(".mfs-stage");
const g = cv.getContext("2d");
const zoomEl = element.querySelector(".mfs-zoom");

// Client state. Coordinates: "view" = the display copy's pixels (S.vw x S.vh); "image" = the
// full-size image's pixels (S.W x S.H), what edits are sent in; "screen" = CSS pixels of the canvas.
const S = {
  data: null, imageId: null, img: null, imgKey: null,
  idx: null, ovKey: null, ids: [], boxes: null,
  vw: 0, vh: 0, W: 0, H: 0,
  segs: [], byId: new Map(), classes: [],
  selected: null, hover: null,
  tool: "select", size: 16, opacity: 0.5, outline: false,
  zoom: 1, panX: 0, panY: 0, fitted: true,
  cls: null, mergeFrom: null, poly: [], stroke: null, probe: null, cursor: null,
  rev: 0, nonce: 0, busy: 0,
  base: document.createElement("canvas"),  // segment colours at view size
  sel: document.createElement("canvas"),   // selection hatching + outline (its bounding box)
  hov: document.createElement("canvas"),   // hover highlight (its bounding box)
  selBox: null, hovBox: null,
};
const assets = new Map();  // key -> decoded picture (ImageBitmap), shared with the inspector

function bump() {
  // data-revision: increases whenever what the canvas shows changes (not on hover or previews)
  S.rev += 1;
  cv.dataset.revision = String(S.rev);
}

async function decode(url) {
  // No colour management and no premultiplication: index PNGs must come back exact.
  const blob = await (await fetch(url)).blob();
  return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

async function asset(ref) {
  // A picture by key: decoded from ref.data when sent, else the one already held (or null).
  if (!ref || !ref.key) return null;
  if (ref.data) assets.set(ref.key, await decode(ref.data));
  return assets.get(ref.key) || null;
}

function readIndex(bitmap, mode) {
  // (vh * vw) segment indices from the overlay PNG: grey = index, RGB = r + 256 g + 65536 b.
  const c = document.createElement("canvas");
  c.width = bitmap.width; c.height = bitmap.height;
  const cx = c.getContext("2d", { willReadFrequently: true });
  cx.drawImage(bitmap, 0, 0);
  const px = cx.getImageData(0, 0, c.width, c.height).data;
  const n = c.width * c.height;
  const idx = new Uint32Array(n);
  if (mode === "RGB") for (let i = 0; i < n; i++) idx[i] = px[4 * i] | (px[4 * i + 1] << 8) | (px[4 * i + 2] << 16);
  else for (let i = 0; i < n; i++) idx[i] = px[4 * i];
  return idx;
}

function indexBoxes(idx, w, h, count) {
  // Bounding box [x0, y0, x1, y1) of every index, one pass.
  const b = new Int32Array(4 * (count + 1));
  for (let i = 0; i <= count; i++) { b[4 * i] = w; b[4 * i + 1] = h; b[4 * i + 2] = -1; b[4 * i + 3] = -1; }
  for (let y = 0, p = 0; y < h; y++) for (let x = 0; x < w; x++, p++) {
    const k = 4 * idx[p];
    if (x < b[k]) b[k] = x; if (y < b[k + 1]) b[k + 1] = y;
    if (x > b[k + 2]) b[k + 2] = x; if (y > b[k + 3]) b[k + 3] = y;
  }
  return b;
}

function hexRGB(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function indexOfId(id) {
  const i = S.ids.indexOf(id);
  return i < 0 ? 0 : i + 1;
}

function paintBase() {
  // The overlay at view size: each segment in its colour (fill), or its boundary (outline).
  const w = S.vw, h = S.vh;
  if (!S.idx || !w) return;
  S.base.width = w; S.base.height = h;
  const cx = S.base.getContext("2d");
  const im = cx.createImageData(w, h);
  const out = new Uint32Array(im.data.buffer);
  const lut = new Uint32Array(S.ids.length + 1);
  S.ids.forEach((id, i) => {
    const seg = S.byId.get(id);
    if (!seg) return;
    const [r, gg, b] = hexRGB(seg.color);
    lut[i + 1] = (255 << 24) | (b << 16) | (gg << 8) | r;  // little-endian RGBA
  });
  const idx = S.idx;
  if (S.outline) {
    for (let y = 0, p = 0; y < h; y++) for (let x = 0; x < w; x++, p++) {
      const k = idx[p];
      if (!k) continue;
      if ((x + 1 < w && idx[p + 1] !== k) || (y + 1 < h && idx[p + w] !== k) ||
          (x > 0 && idx[p - 1] !== k) || (y > 0 && idx[p - w] !== k)) out[p] = lut[k];
    }
  } else {
    for (let p = 0; p < w * h; p++) out[p] = lut[idx[p]];
  }
  cx.putImageData(im, 0, 0);
}

function paintMask(canvas, id, kind) {
  // One segment's highlight on its bounding box: "sel" = hatching + a white/black outline,
  // "hov" = a light veil + a white outline. Returns the box (view pixels) or null.
  const k = indexOfId(id);
  if (!k || !S.boxes || S.boxes[4 * k + 2] < 0) return null;
  const x0 = S.boxes[4 * k], y0 = S.boxes[4 * k + 1];
  const x1 = S.boxes[4 * k + 2] + 1, y1 = S.boxes[4 * k + 3] + 1;
  const w = x1 - x0, h = y1 - y0, W = S.vw, idx = S.idx;
  canvas.width = w; canvas.height = h;
  const cx = canvas.getContext("2d");
  const im = cx.createImageData(w, h);
  const out = new Uint32Array(im.data.buffer);
  const WHITE = 0xffffffff, BLACK = 0xff000000, HATCH = 0xd8ffffff, VEIL = 0x55ffffff;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const p = y * W + x;
    if (idx[p] !== k) continue;
    const edge = x === 0 || y === 0 || x === W - 1 || y === S.vh - 1 ||
      idx[p - 1] !== k || idx[p + 1] !== k || idx[p - W] !== k || idx[p + W] !== k;
    const q = (y - y0) * w + (x - x0);
    if (kind === "sel") out[q] = edge ? ((x + y) % 6 < 3 ? WHITE : BLACK) : ((x + y) % 8 < 2 ? HATCH : 0);
    else out[q] = edge ? WHITE : VEIL;
  }
  cx.putImageData(im, 0, 0);
  return [x0, y0, w, h];
}

function refreshSelection() {
  S.selBox = S.selected == null ? null : paintMask(S.sel, S.selected, "sel");
}

function refreshHover() {
  S.hovBox = S.hover == null || S.hover === S.selected ? null : paintMask(S.hov, S.hover, "hov");
}

// ------------------------------------------------------------------------------ view geometry

function resize() {
  const r = stage.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width)), h = Math.max(1, Math.round(r.height));
  if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
    cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    cv.style.width = w + "px"; cv.style.height = h + "px";
  }
  if (S.fitted) fit(false);
  draw();
}

function fit(count = true) {
  const w = cv.clientWidth, h = cv.clientHeight;
  if (!S.vw || !w) return;
  S.zoom = Math.min(w / S.vw, h / S.vh);
  S.panX = (w - S.vw * S.zoom) / 2; S.panY = (h - S.vh * S.zoom) / 2;
  S.fitted = true;
  if (count) { bump(); draw(); }
}

function zoomAt(sx, sy, factor) {
  const z = Math.min(64, Math.max(0.05, S.zoom * factor));
  S.panX = sx - (sx - S.panX) * (z / S.zoom); S.panY = sy - (sy - S.panY) * (z / S.zoom);
  S.zoom = z; S.fitted = false;
  bump(); draw();
}

function toView(sx, sy) { return [(sx - S.panX) / S.zoom, (sy - S.panY) / S.zoom]; }
function toImage(sx, sy) {
  const [vx, vy] = toView(sx, sy);
  return [vx * S.W / S.vw, vy * S.H / S.vh];
}
function toScreen(ix, iy) { return [ix * S.vw / S.W * S.zoom + S.panX, iy * S.vh / S.H * S.zoom + S.panY]; }

function idAt(sx, sy) {
  // The segment id under a screen point (from the view-size index map), or null.
  if (!S.idx) return null;
  const [vx, vy] = toView(sx, sy);
  const x = Math.floor(vx), y = Math.floor(vy);
  if (x < 0 || y < 0 || x >= S.vw || y >= S.vh) return null;
  const k = S.idx[y * S.vw + x];
  return k ? S.ids[k - 1] : null;
}

// ------------------------------------------------------------------------------ drawing

let frame = 0;
function draw() {
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = 0; paint(); });
}

function paint() {
  const dpr = window.devicePixelRatio || 1;
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, cv.width, cv.height);
  const v = S.vw ? [S.panX, S.panY, S.vw * S.zoom, S.vh * S.zoom] : [0, 0, 0, 0];
  cv.dataset.view = v.map((x) => x.toFixed(1)).join(",");
  cv.dataset.zoom = S.zoom.toFixed(3);
  zoomEl.textContent = S.vw ? `${Math.round(S.zoom * S.vw / S.W * 100)}%` : "";
  if (!S.img) return;
  g.setTransform(dpr * S.zoom, 0, 0, dpr * S.zoom, dpr * S.panX, dpr * S.panY);
  g.imageSmoothingEnabled = S.zoom < 1;
  g.drawImage(S.img, 0, 0, S.vw, S.vh);
  g.imageSmoothingEnabled = false;
  g.globalAlpha = S.outline ? 1 : S.opacity;
  g.drawImage(S.base, 0, 0);
  g.globalAlpha = 1;
  if (S.hovBox) g.drawImage(S.hov, S.hovBox[0], S.hovBox[1]);
  if (S.selBox) g.drawImage(S.sel, S.selBox[0], S.selBox[1]);
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  paintTools();
}

function paintTools() {
  // Previews in screen space: the stroke being drawn, the brush circle, the polygon, the probe.
  const r = brushScreenRadius();
  g.lineCap = "round"; g.lineJoin = "round";
  if (S.stroke && S.stroke.length) {
    g.strokeStyle = S.tool === "erase" ? "rgba(230,60,60,0.6)" : "rgba(60,220,120,0.6)";
    g.lineWidth = 2 * r;
    g.beginPath();
    S.stroke.forEach(([x, y], i) => { const [a, b] = toScreen(x, y); i ? g.lineTo(a, b) : g.moveTo(a, b); });
    if (S.stroke.length === 1) { const [a, b] = toScreen(...S.stroke[0]); g.lineTo(a + 0.01, b); }
    g.stroke();
  }
  if ((S.tool === "brush" || S.tool === "erase") && S.cursor) {
    g.strokeStyle = "#fff"; g.lineWidth = 1.5;
    g.beginPath(); g.arc(S.cursor[0], S.cursor[1], r, 0, 2 * Math.PI); g.stroke();
    g.strokeStyle = "#000"; g.lineWidth = 0.75; g.stroke();
  }
  if (S.poly.length) {
    g.strokeStyle = "#ffeb3b"; g.fillStyle = "rgba(255,235,59,0.25)"; g.lineWidth = 2;
    g.beginPath();
    S.poly.forEach(([x, y], i) => { const [a, b] = toScreen(x, y); i ? g.lineTo(a, b) : g.moveTo(a, b); });
    if (S.cursor) g.lineTo(S.cursor[0], S.cursor[1]);
    g.closePath(); g.fill(); g.stroke();
    S.poly.forEach(([x, y]) => { const [a, b] = toScreen(x, y); g.fillStyle = "#ffeb3b"; g.fillRect(a - 3, b - 3, 6, 6); });
  }
  if (S.probe) {
    const [a, b] = toScreen(S.probe[0] + 0.5, S.probe[1] + 0.5);
    g.strokeStyle = "#00e5ff"; g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(a - 14, b); g.lineTo(a - 4, b); g.moveTo(a + 4, b); g.lineTo(a + 14, b);
    g.moveTo(a, b - 14); g.lineTo(a, b - 4); g.moveTo(a, b + 4); g.lineTo(a, b + 14); g.stroke();
  }
}

function brushScreenRadius() { return S.size / 2; }
