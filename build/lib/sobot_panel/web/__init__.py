"""The panel's web assets, shipped inside the package as `sobot_panel.web`: Jinja2 templates, static
files, message catalogs and sample data. Code finds them only through `sobot_panel.assets`."""
