from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """Pages shaped as ``shared_contracts.schemas.common.Page``; clients may ask for up to 500 rows."""

    page_size_query_param = "page_size"
    max_page_size = 500
