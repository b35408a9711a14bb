"""The report's HTML page: one Jinja2 template with inline CSS, no scripts and no external resources,
so that the page opens from disk in any browser without a server or a network."""

from __future__ import annotations

from typing import Any

import jinja2

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
:root { --fg: #1d2330; --muted: #5b6472; --line: #e3e7ee; --bg: #f4f6fa; --card: #ffffff; --head: #1d2330; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--head); color: #fff; padding: 26px 40px 18px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 600; letter-spacing: -0.01em; }
header p { margin: 0; color: #c3cad8; font-size: 13px; }
nav { margin-top: 14px; display: flex; flex-wrap: wrap; gap: 6px; }
nav a { color: #e6eaf2; text-decoration: none; font-size: 13px; padding: 3px 10px; border-radius: 12px;
        background: rgba(255, 255, 255, 0.10); }
nav a:hover { background: rgba(255, 255, 255, 0.22); }
main { max-width: 1320px; margin: 0 auto; padding: 22px 40px 56px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 24px 20px;
          margin: 0 0 20px; box-shadow: 0 1px 2px rgba(20, 30, 50, 0.04); }
section.warnings { background: #fff8e8; border-color: #f0d595; }
h2 { font-size: 19px; font-weight: 600; margin: 0 0 12px; }
h3 { font-size: 15px; font-weight: 600; margin: 18px 0 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: right; white-space: pre-line;
         vertical-align: top; }
th { background: #eef1f6; font-weight: 600; white-space: nowrap; }
th:first-child, td:first-child, table.text td, table.text th { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfd; }
tbody tr:hover { background: #f1f5fd; }
td.group { font-weight: 600; white-space: nowrap; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 8px;
          vertical-align: -1px; }
.note, figcaption, .hint { color: var(--muted); font-size: 13px; }
.note { margin: 10px 0 0; }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto 6px; }
code { background: #eef1f6; border-radius: 4px; padding: 1px 5px; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 4px 28px;
        align-items: start; }
summary { cursor: pointer; font-weight: 600; padding: 6px 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 30px; }
</style>
</head>
<body>
{%- macro group_cell(group) -%}
<td class="group"><span class="swatch" style="background: {{ group.color }}"></span>{{ group.label }}</td>
{%- endmacro %}
{%- macro render_table(table, css="") -%}
<div class="scroll"><table class="{{ css }}">
<thead><tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for group, cells in table.rows %}
<tr>{{ group_cell(group) }}{% for cell in cells %}<td>{{ cell }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody>
</table></div>
{% if table.note %}<p class="note">{{ table.note }}</p>{% endif %}
{%- endmacro %}
{%- macro render_figures(section) -%}
{% for figure in figures if figure.section == section %}
<figure>
<img src="{{ figure.file }}" alt="{{ figure.title }}">
<figcaption><strong>{{ figure.title }}.</strong> {{ figure.caption }}</figcaption>
</figure>
{% endfor %}
{%- endmacro %}
<header>
<h1>{{ title }}</h1>
<p>{{ runs.rows | length }} group{{ "s" if runs.rows | length != 1 }} of runs · evaluation split: {{ split }}
 · accuracies in % · created {{ created }} with avbalance {{ version }}</p>
<nav>
<a href="#runs">Runs</a><a href="#metrics">Final metrics</a><a href="#curves">Learning curves</a>
<a href="#method">Method coefficients</a><a href="#modalities">Per-modality accuracy</a>
<a href="#probes">Linear probes</a><a href="#shapley">Modality contribution</a>
<a href="#confusion">Confusion matrices</a>
{% if cost %}<a href="#cost">Cost</a>{% endif %}
{% if figures | selectattr("section", "equalto", "robustness") | list %}<a href="#robustness">Robustness</a>{% endif %}
</nav>
</header>
<main>
{% if warnings %}
<section class="warnings">
<h2>Warnings</h2>
<ul>{% for warning in warnings %}<li>{{ warning }}</li>{% endfor %}</ul>
</section>
{% endif %}

<section id="runs">
<h2>Runs</h2>
{{ render_table(runs, "text") }}
<p class="note">Runs whose configs differ only in seeds (and in where they ran or wrote) form one group.</p>
</section>

<section id="metrics">
<h2>Final metrics</h2>
{{ render_table(metrics) }}
</section>

<section id="curves">
<h2>Learning curves</h2>
{{ render_figures("curves") }}
</section>

<section id="method">
<h2>Method coefficients</h2>
{% if figures | selectattr("section", "equalto", "method") | list %}
{{ render_figures("method") }}
{% else %}
<p class="hint">None of these runs logged method coefficients (a <code>baseline</code> or MMCosine run logs none).</p>
{% endif %}
</section>

<section id="modalities">
<h2>Per-modality accuracy</h2>
{{ render_figures("modality") }}
</section>

<section id="probes">
<h2>Linear probes</h2>
{% if probe %}
{{ render_table(probe) }}
{% else %}
<p class="hint">No run has been probed yet: <code>avbalance probe --ckpt RUN</code> writes <code>RUN/probe.json</code>,
or pass <code>--probe</code> to <code>avbalance report</code>.</p>
{% endif %}
</section>

{% if verification %}
<section id="verification">
<h2>Speaker verification</h2>
{{ render_table(verification) }}
</section>

{% endif %}
<section id="shapley">
<h2>Modality contribution</h2>
{% if shapley %}
{{ render_table(shapley) }}
{{ render_figures("shapley") }}
{% else %}
<p class="hint">{% if analysed %}No checkpoint could be analysed (see the warnings).{% else %}Not computed
(<code>--no-analysis</code>).{% endif %}</p>
{% endif %}
</section>

{% if cost %}
<section id="cost">
<h2>Cost</h2>
{{ render_table(cost) }}
</section>

{% endif %}
{% if figures | selectattr("section", "equalto", "robustness") | list %}
<section id="robustness">
<h2>Robustness</h2>
{{ render_figures("robustness") }}
</section>

{% endif %}
<section id="confusion">
<h2>Confusion matrices and per-class accuracy</h2>
{% if class_tables %}
{{ render_figures("confusion") }}
<div class="grid">
{% for table in class_tables %}
<details{% if table.rows | length <= 12 %} open{% endif %}>
<summary><span class="swatch" style="background: {{ table.group.color }}"></span>
{{ table.group.label }}: per-class {{ split }} accuracy (%)</summary>
<div class="scroll"><table>
<thead><tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for row in table.rows %}
<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody>
</table></div>
</details>
{% endfor %}
</div>
{% else %}
<p class="hint">{% if analysed %}No checkpoint could be analysed (see the warnings).{% else %}Not computed
(<code>--no-analysis</code>).{% endif %}</p>
{% endif %}
</section>
</main>
<footer>Shapley values: modalities removed by {{ removal }} features (see docs/analysis.md). Generated by
<code>avbalance report</code>.</footer>
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(
    autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
)


def render(**context: Any) -> str:
    return _ENVIRONMENT.from_string(TEMPLATE).render(**context)
