// The Annotate canvas, part 2: tools, pointer and keyboard. Edits are sent in image pixels.

const msgEl = element.querySelector(".mfs-msg");
const hoverEl = element.querySelector(".mfs-hover");
let spaceDown = false;
let drag = null;

function local(e) {
  const r = cv.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}

function say(text) { msgEl.textContent = text || ""; }

function setTool(tool) {
  S.tool = tool;
  if (tool !== "polygon") S.poly = [];
  element.querySelectorAll(".mfs-tool").forEach((b) => b.classList.toggle("on", b.dataset.tool === tool));
  cv.style.cursor = tool === "select" ? "default" : tool === "probe" ? "crosshair" : "none";
  if (tool === "brush" || tool === "erase") {
    const target = S.selected != null ? `segment ${S.selected}` : (tool === "brush" ? `a new ${className(S.cls)} segment` : "every segment");
    say(`${tool === "brush" ? "Brush adds to" : "Eraser removes from"} ${target}.`);
  } else if (tool === "polygon") say("Polygon: click the corners; Enter or double-click closes it.");
  draw();
}

function className(catId) {
  const c = S.classes.find((k) => k.id === catId);
  return c ? c.name : "?";
}

function setSelected(id, openQuery = true) {
  S.selected = id == null ? null : id;
  cv.dataset.selected = S.selected == null ? "" : String(S.selected);
  refreshSelection(); refreshHover();
  renderPanel();
  bump(); draw();
  const seg = S.selected == null ? null : S.byId.get(S.selected);
  if (seg) say(`Selected ${seg.id}: ${seg.cls} (${seg.area} px${seg.score != null ? `, score ${seg.score}` : ""}).`);
  if (openQuery && seg && seg.query != null) send("show_query", { query: seg.query }, false);
}

function setHover(id) {
  if (id === S.hover) return;
  S.hover = id;
  refreshHover();
  const seg = id == null ? null : S.byId.get(id);
  hoverEl.textContent = seg ? `${seg.id}: ${seg.cls} · ${seg.area} px` : "";
  panelHover(id);
  draw();
}

function probeAt(sx, sy) {
  const [x, y] = toImage(sx, sy);
  if (x < 0 || y < 0 || x >= S.W || y >= S.H) return;
  S.probe = [Math.floor(x), Math.floor(y)];
  bump(); draw();
  send("probe", { x, y }, false);
}

function clickSelect(sx, sy) {
  const id = idAt(sx, sy);
  if (S.mergeFrom != null) {
    const from = S.mergeFrom;
    S.mergeFrom = null;
    if (id != null && id !== from) send("merge", { segment: id, other: from });
    else say("Merge cancelled.");
    return;
  }
  setSelected(id);
}

function closePolygon() {
  const pts = [];
  for (const p of S.poly) {  // a double-click adds its point twice
    const last = pts[pts.length - 1];
    if (!last || Math.hypot(p[0] - last[0], p[1] - last[1]) > 1e-6) pts.push(p);
  }
  S.poly = [];
  draw();
  if (pts.length < 3) { say("A polygon needs 3 corners or more."); return; }
  send("polygon", { points: pts, mode: "add", segment: S.selected, cls: S.cls });
}

cv.addEventListener("pointerdown", (e) => {
  cv.focus({ preventScroll: true });
  const [sx, sy] = local(e);
  if (e.button === 1 || (e.button === 0 && spaceDown)) {
    drag = { x: e.clientX, y: e.clientY, px: S.panX, py: S.panY };
    cv.setPointerCapture(e.pointerId);
    e.preventDefault();
    return;
  }
  if (e.button !== 0 || !S.img) return;
  if (e.altKey || S.tool === "probe") { probeAt(sx, sy); return; }
  if (S.tool === "select") { clickSelect(sx, sy); return; }
  if (S.tool === "brush" || S.tool === "erase") {
    S.stroke = [toImage(sx, sy)];
    cv.setPointerCapture(e.pointerId);
    draw();
    return;
  }
  if (S.tool === "polygon") { S.poly.push(toImage(sx, sy)); draw(); }
});

cv.addEventListener("pointermove", (e) => {
  const [sx, sy] = local(e);
  S.cursor = [sx, sy];
  if (drag) {
    S.panX = drag.px + e.clientX - drag.x; S.panY = drag.py + e.clientY - drag.y; S.fitted = false;
    draw();
    return;
  }
  if (S.stroke) {
    const p = toImage(sx, sy), last = S.stroke[S.stroke.length - 1];
    const [lx, ly] = toScreen(last[0], last[1]);
    if (Math.hypot(sx - lx, sy - ly) >= 1) S.stroke.push(p);
  } else if (S.tool === "select") setHover(idAt(sx, sy));
  draw();
});

cv.addEventListener("pointerup", (e) => {
  if (drag) { drag = null; bump(); return; }
  if (!S.stroke) return;
  const points = S.stroke;
  S.stroke = null;
  const width = brushScreenRadius() * 2 / S.zoom * (S.W / S.vw);  // in image pixels
  const mode = S.tool === "erase" ? "erase" : "add";
  send("brush", { points, width, mode, segment: S.selected, cls: S.cls });
  draw();
});

cv.addEventListener("dblclick", () => { if (S.tool === "polygon" && S.poly.length) closePolygon(); });
cv.addEventListener("pointerleave", () => { S.cursor = null; setHover(null); draw(); });
cv.addEventListener("wheel", (e) => {
  if (!S.img) return;
  e.preventDefault();
  const [sx, sy] = local(e);
  zoomAt(sx, sy, e.deltaY < 0 ? 1.2 : 1 / 1.2);
}, { passive: false });

element.querySelectorAll(".mfs-tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
element.querySelector(".mfs-size").addEventListener("input", (e) => { S.size = +e.target.value; draw(); });
element.querySelector(".mfs-opacity").addEventListener("input", (e) => { S.opacity = +e.target.value / 100; bump(); draw(); });
element.querySelector(".mfs-outline").addEventListener("change", (e) => { S.outline = e.target.checked; paintBase(); bump(); draw(); });
const help = element.querySelector(".mfs-help");
const actions = {
  fit: () => fit(true),
  undo: () => send("undo"),
  redo: () => send("redo"),
  help: () => { help.hidden = !help.hidden; },
};
element.querySelectorAll(".mfs-act").forEach((b) => b.addEventListener("click", () => actions[b.dataset.act]()));

// ------------------------------------------------------------------------------ keyboard

function typing(t) {
  if (!t) return false;
  if (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT") return true;
  return t.tagName === "INPUT" && !["range", "checkbox", "radio", "button", "file"].includes(t.type);
}

function press(elemId) {
  const el = document.getElementById(elemId);
  const b = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
  if (b) b.click();
}

function onKey(e) {
  if (typing(e.target) || root.offsetParent === null) return;  // a field, or another tab
  const k = e.key, ctrl = e.ctrlKey || e.metaKey;
  if (ctrl) {
    const lk = k.toLowerCase();
    if (lk === "z") send(e.shiftKey ? "redo" : "undo");
    else if (lk === "y") send("redo");
    else if (lk === "s") press("save-next");
    else return;
    e.preventDefault();
    return;
  }
  if (e.altKey) return;
  if (/^[1-9]$/.test(k)) {
    const c = S.classes[+k - 1];
    if (!c) return;
    if (S.selected != null) send("relabel", { segment: S.selected, cls: c.id });
    else { S.cls = c.id; renderPanel(); say(`Class for new segments: ${c.name}.`); }
  } else if (k === "Delete" || k === "Backspace") {
    if (S.poly.length) { S.poly.pop(); draw(); }
    else if (S.selected != null) send("delete", { segment: S.selected });
  } else if (k === "m" || k === "M") {
    if (S.selected == null) { say("Select the segment to merge first, then press M."); return; }
    S.mergeFrom = S.selected;
    setTool("select");
    say(`Merge: click the segment that ${S.selected} should join (Esc cancels).`);
  } else if ("bepv".includes(k.toLowerCase()) && k.length === 1) {
    setTool({ b: "brush", e: "erase", p: "polygon", v: "select" }[k.toLowerCase()]);
  } else if (k === "Escape") {
    S.poly = []; S.mergeFrom = null; S.stroke = null; help.hidden = true;
    if (S.selected != null) setSelected(null, false); else draw();
  } else if (k === "Enter") {
    if (S.tool === "polygon" && S.poly.length) closePolygon(); else return;
  } else if (k === "a" || k === "A") press("prev-image");
  else if (k === "d" || k === "D") press("next-image");
  else if (k === "u" || k === "U") press("next-uncertain");
  else if (k === "f" || k === "F") fit(true);
  else if (k === "o" || k === "O") {
    const box = element.querySelector(".mfs-outline");
    box.checked = !box.checked; box.dispatchEvent(new Event("change"));
  } else if (k === "[" || k === "]") {
    S.size = Math.max(2, Math.min(120, S.size * (k === "]" ? 1.25 : 0.8)));
    element.querySelector(".mfs-size").value = String(Math.round(S.size)); draw();
  } else if (k === "?") help.hidden = !help.hidden;
  else if (k === " ") spaceDown = true;
  else return;
  e.preventDefault();
}

if (window.__mfsKeys) document.removeEventListener("keydown", window.__mfsKeys);
window.__mfsKeys = onKey;
document.addEventListener("keydown", onKey);
document.addEventListener("keyup", (e) => { if (e.key === " ") spaceDown = false; });
