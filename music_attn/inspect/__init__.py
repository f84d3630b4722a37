"""Looking inside: attention maps over notes, and the page, PNG and JSON that show them."""
