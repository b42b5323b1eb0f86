// A small inline SVG chart of an instance's CPU (percent of one core) and memory use.
"use strict";
import {bytes} from "/ui/lib.js";

const NS = "http://www.w3.org/2000/svg";
const W = 120, H = 32;

function line(values, top, cls) {
  const n = values.length;
  const points = values.map((v, i) => {
    const x = n === 1 ? W : (i / (n - 1)) * W;
    const y = H - 1 - (Math.min(v, top) / (top || 1)) * (H - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  if (n === 1) points.unshift(`0,${points[0].split(",")[1]}`);
  const p = document.createElementNS(NS, "polyline");
  p.setAttribute("points", points.join(" "));
  p.setAttribute("class", cls);
  return p;
}

// `samples`: [{cpu, memory}] oldest first; memory drawn against `memoryTop` bytes.
export function chart(samples, memoryTop) {
  const cpu = samples.map((s) => s.cpu), mem = samples.map((s) => s.memory);
  const last = samples.at(-1);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("role", "img");
  svg.setAttribute("class", "usage-chart");
  const label = `CPU ${last.cpu.toFixed(0)}%, memory ${bytes(last.memory)} (last ${samples.length} samples)`;
  svg.setAttribute("aria-label", label);
  const title = document.createElementNS(NS, "title");
  title.textContent = label;
  svg.append(title, line(cpu, Math.max(100, ...cpu), "cpu"), line(mem, Math.max(memoryTop || 0, ...mem), "mem"));
  return svg;
}
