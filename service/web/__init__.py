"""The history page: the web page for people at ``/``. Its routes (history_page,
bulk_page, sign_in), how it is rendered (rendering), and the files it serves
(templates/, static/) live together here."""
